package procmem

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	kib      = 1024
	template = "/home/dev/.local/share/fleet/images/ubuntu-24.04/7/warm/0b1c2d3e4f/memory"
)

func readFixture(t *testing.T, name string) *Usage {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u, err := Read(f)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// A warm clone's QEMU: the template's RAM file mapped privately (shared
// pages read from it, dirty ones the guest wrote), TCG's translation
// cache and the heap anonymous, a deleted library with spaces in its path.
func TestWarmCloneQEMU(t *testing.T) {
	u := readFixture(t, "qemu-clone.smaps")
	for _, c := range []struct {
		name      string
		got, want uint64
	}{
		{"unique", u.Unique(), (100 + 40 + 4 + 20000 + 120000 + 13000 + 1000 + 132) * kib},
		{"shared", u.Shared(), (2048 + 8000 + 188000 + 8) * kib},
		{"template shared", u.SharedWith(template), 188000 * kib},
		{"guest written", u.WrittenIn(template), 13000 * kib},
		{"hypervisor anon", u.AnonExcept(2048 << 20), (20000 + 120000 + 1000 + 132) * kib},
		{"anon, nothing left out", u.AnonExcept(0), (20000 + 120000 + 1000 + 132) * kib},
		{"swapped", u.Swapped(), 500 * kib},
		{"mappings", uint64(u.Mappings), 11},
		{"deleted file with spaces", u.File("/home/dev/my vms/lib thing.so").PrivateClean, 40 * kib},
		{"deleted memfd", u.File("/memfd:vhost-log").SharedDirty, 8 * kib},
		{"unclean path", u.SharedWith(template + "/../memory"), 188000 * kib},
		{"another file", u.SharedWith("/home/dev/other/memory"), 0},
		{"no file", u.SharedWith(""), 0},
	} {
		if c.got != c.want {
			t.Errorf("%s: %d, want %d", c.name, c.got, c.want)
		}
	}
}

// A cold-booted machine's RAM is anonymous: the read-write mapping of its
// size is the guest's, not the hypervisor's; TCG's executable buffer of
// the same size is the hypervisor's.
func TestAnonymousGuestRAM(t *testing.T) {
	text := strings.Join([]string{
		"7f0000000000-7f0040000000 rwxp 00000000 00:00 0 ",
		"Rss:              90000 kB",
		"Private_Dirty:    90000 kB",
		"7f0040000000-7f0080000000 rw-p 00000000 00:00 0 ",
		"Rss:             500000 kB",
		"Private_Dirty:   500000 kB",
		"7f0080000000-7f0080100000 rw-p 00000000 00:00 0 ",
		"Private_Dirty:     1024 kB",
	}, "\n")
	u, err := Read(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := u.AnonExcept(1<<30), uint64(90000+1024)*kib; got != want {
		t.Errorf("hypervisor anon: %d, want %d", got, want)
	}
	if got, want := u.AnonExcept(512<<20), uint64(90000+500000+1024)*kib; got != want {
		t.Errorf("no mapping of that size: %d, want %d", got, want)
	}
}

func TestHostileText(t *testing.T) {
	const hdr = "7f0000000000-7f0000001000 rw-p 00000000 00:00 0 \n"
	for _, c := range []struct {
		name, text string
		err        string // "" parses
		unique     uint64
	}{
		{"empty", "", "", 0},
		{"blank lines", "\n\n  \n", "", 0},
		{"bad number", hdr + "Private_Dirty: 12x kB\n", "not a count", 0},
		{"negative", hdr + "Private_Dirty: -4 kB\n", "not a count", 0},
		{"huge", hdr + "Private_Dirty: 99999999999999999999 kB\n", "not a count", 0},
		{"past any machine", hdr + "Private_Dirty: 17592186044417 kB\n", "not a count", 0},
		{"largest taken", hdr + "Private_Dirty: 17592186044416 kB\n", "", 17592186044416 * kib},
		{"missing kB", hdr + "Private_Dirty: 12\n", "not a number of kB", 0},
		{"other unit", hdr + "Private_Dirty: 12 MB\n", "not a number of kB", 0},
		{"no value", hdr + "Private_Dirty:\n", "not a number of kB", 0},
		{"no colon", hdr + "Private_Dirty 12 kB\n", "neither", 0},
		{"field before mapping", "Private_Dirty: 4 kB\n" + hdr, "before any mapping", 0},
		{"uncounted field before mapping", "Whatever: x\n" + hdr + "Private_Dirty: 4 kB\n", "", 4 * kib},
		{"uncounted field odd", hdr + "THPeligible:    0\nVmFlags:\nNew_Field: lots\nPrivate_Dirty: 4 kB\n", "", 4 * kib},
		{"truncated mid-mapping", hdr + "Rss: 8 kB\nPrivate_Dirty: 4 kB\nPrivate_Cl", "neither", 0},
		{"truncated after a field", hdr + "Private_Dirty: 4 kB", "", 4 * kib},
		{"reversed range", "7f0000001000-7f0000000000 rw-p 00000000 00:00 0\n", "bad address range", 0},
		{"range too wide", "7f00000000000000000-7f0000001000 rw-p 00000000 00:00 0\n", "bad address range", 0},
		{"a header spoiled", "7f0000000000-7f000000zzzz rw-p 00000000 00:00 0\n", "neither", 0},
		{"short header", "7f0000000000-7f0000001000 rw-p\n", "bad mapping line", 0},
		{"bad perms", "7f0000000000-7f0000001000 rw 0 00:00 0\n", "bad mapping line", 0},
		{"tabs and CRs", "7f0000000000-7f0000001000\trw-p\t0\t00:00\t0\r\nPrivate_Dirty:\t4\tkB\r\n", "", 4 * kib},
		{"sums saturate", strings.Repeat(hdr+"Private_Dirty: 17592186044416 kB\nPrivate_Clean: 17592186044416 kB\n", 600), "", 1<<64 - 1},
		{"line too long", hdr + "X: " + strings.Repeat("a", 70<<10) + "\n", "too long", 0},
		{"NUL bytes", hdr + "Private_Dirty: \x004 kB\n", "not a", 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			u, err := Read(strings.NewReader(c.text))
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err %v, want %q", err, c.err)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("error is not one line: %q", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if u.Unique() != c.unique {
				t.Errorf("unique %d, want %d", u.Unique(), c.unique)
			}
		})
	}
}

func TestBounds(t *testing.T) {
	many := strings.Repeat("1-2 rw-p 0 0:0 0\n", MaxMappings+1)
	if _, err := Read(strings.NewReader(many)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("too many mappings: %v", err)
	}
	big := strings.Repeat("Whatever: "+strings.Repeat("x", 1000)+"\n", MaxText/1000+10)
	if _, err := Read(strings.NewReader(big)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("too much text: %v", err)
	}
}

func TestReadPID(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "4242"), 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join("testdata", "qemu-clone.smaps"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "4242", "smaps"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	u, err := ReadPID(root, 4242)
	if err != nil || u.SharedWith(template) != 188000*kib {
		t.Fatalf("%v %+v", err, u)
	}
	if _, err := ReadPID(root, 4243); err == nil {
		t.Error("a process with no smaps read")
	}
	bad := filepath.Join(root, "7")
	_ = os.MkdirAll(bad, 0o755)
	_ = os.WriteFile(filepath.Join(bad, "smaps"), []byte("Rss: 1 kB\n"), 0o644)
	if _, err := ReadPID(root, 7); err == nil || !strings.Contains(err.Error(), "process 7") {
		t.Errorf("bad smaps: %v", err)
	}
	// The real thing parses (Linux only).
	if _, err := os.Stat("/proc/self/smaps"); err == nil {
		u, err := ReadPID("", os.Getpid())
		if err != nil || u.Mappings == 0 || u.Unique() == 0 {
			t.Errorf("this process: %v %+v", err, u)
		}
	}
}
