package procmem

import (
	"strings"
	"testing"
)

const sample = `55d4c0000000-55d4c0a00000 r-xp 00000000 fe:01 1234 /usr/bin/qemu-system-x86_64
Rss:                1024 kB
Shared_Clean:       1000 kB
Shared_Dirty:          0 kB
Private_Clean:        24 kB
Private_Dirty:         0 kB
7f0000000000-7f0080000000 rw-p 00000000 fe:01 99 /home/me/.fleet/images/debian-12/v1/warm/ab cd/memory
Rss:              200000 kB
Shared_Clean:     180000 kB
Shared_Dirty:          0 kB
Private_Clean:         0 kB
Private_Dirty:     20000 kB
VmFlags: rd wr mr mw me ac sd
7f0080000000-7f0090000000 rw-p 00000000 00:00 0
Rss:              140000 kB
Shared_Clean:          0 kB
Private_Dirty:    140000 kB
7f00a0000000-7f00a0001000 rw-s 00000000 00:01 5 /memfd:x (deleted)
Shared_Dirty:          4 kB
`

func TestParseCountsTheFileApart(t *testing.T) {
	u, err := Parse(strings.NewReader(sample), "/home/me/.fleet/images/debian-12/v1/warm/ab cd/memory")
	if err != nil {
		t.Fatal(err)
	}
	want := Usage{Private: (24 + 20000 + 140000) << 10, Shared: (1000 + 180000 + 4) << 10, FileShared: 180000 << 10, FilePrivate: 20000 << 10}
	if u != want {
		t.Errorf("%+v, want %+v", u, want)
	}
	// No file asked: nothing apart; another file: nothing matches.
	for _, f := range []string{"", "/other/memory", "/home/me/.fleet/images/debian-12/v1/warm/ab"} {
		u, _ := Parse(strings.NewReader(sample), f)
		if u.FileShared != 0 || u.FilePrivate != 0 || u.Private != want.Private {
			t.Errorf("file %q: %+v", f, u)
		}
	}
}

func TestParseRefusesBadNumbersAndTakesOddText(t *testing.T) {
	for _, bad := range []string{"Private_Dirty: -5 kB\n", "Private_Dirty: 1e9 kB\n", "Private_Dirty: 99999999999999999999 kB\n", "Shared_Clean: x\n"} {
		if _, err := Parse(strings.NewReader(bad), ""); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	for _, odd := range []string{"", "\n\n", "Private_Dirty:\n", "garbage line\n", "7f-80 rw-p 0 0 0\n", strings.Repeat("x", 100000) + "\n"} {
		if _, err := Parse(strings.NewReader(odd), "/m"); err != nil {
			t.Errorf("%.20q: %v", odd, err)
		}
	}
	if _, err := Parse(strings.NewReader(strings.Repeat("y", 2<<20)+"\n"), ""); err == nil {
		t.Error("a 2 MiB line passed")
	}
}
