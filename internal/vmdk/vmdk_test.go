package vmdk_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentfleet/agentfleet/internal/termsafe"
	"github.com/agentfleet/agentfleet/internal/vmdk"
	"github.com/agentfleet/agentfleet/internal/vmdk/vmdktest"
)

func check(b []byte) error {
	_, _, err := vmdk.Check(bytes.NewReader(b), int64(len(b)))
	return err
}

// The disk qemu-img writes for fleet's OVA and box passes.
func TestQemuImgStreamOptimizedPasses(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("no qemu-img")
	}
	dir := t.TempDir()
	raw, out := filepath.Join(dir, "r.raw"), filepath.Join(dir, "debian-12-v1-disk001.vmdk")
	os.WriteFile(raw, bytes.Repeat([]byte("agentfleet"), 300000), 0o644)
	if b, err := exec.Command("qemu-img", "convert", "-q", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, out).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v %s", err, b)
	}
	b, _ := os.ReadFile(out)
	h, d, err := vmdk.Check(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if d.Extent.File != filepath.Base(out) || d.Extent.Type != "SPARSE" || h.Capacity*vmdk.Sector < 3000000 {
		t.Fatalf("header %+v descriptor %+v", h, d)
	}
	// And its plain (monolithicSparse) kind does not: not what fleet ships.
	plain := filepath.Join(dir, "plain.vmdk")
	exec.Command("qemu-img", "convert", "-q", "-f", "raw", "-O", "vmdk", raw, plain).Run()
	if b, _ := os.ReadFile(plain); check(b) == nil {
		t.Fatal("a monolithicSparse VMDK passed as streamOptimized")
	}
}

func TestHostileVMDKsAreRefused(t *testing.T) {
	desc := func(old, new string) string {
		return strings.Replace(vmdktest.Descriptor("disk.vmdk", 2048), old, new, 1)
	}
	cases := map[string]struct {
		vmdk []byte
		want string
	}{
		"text descriptor naming /etc/shadow": {[]byte("# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"/etc/shadow\" 0\n"), "text descriptor"},
		"short text descriptor":              {[]byte("# Disk\nRW 1 FLAT \"/x\"\n"), "text descriptor"},
		"embedded FLAT extent":               {vmdktest.Build(vmdktest.Options{Descriptor: desc(`RW 2048 SPARSE "disk.vmdk"`, `RW 2048 FLAT "/etc/shadow" 0`)}), "FLAT extent"},
		"embedded VMFS extent":               {vmdktest.Build(vmdktest.Options{Descriptor: desc(`RW 2048 SPARSE "disk.vmdk"`, `RW 2048 VMFS "/dev/sda"`)}), "VMFS extent"},
		"second extent":                      {vmdktest.Build(vmdktest.Options{Descriptor: desc(`RW 2048 SPARSE "disk.vmdk"`, "RW 2048 SPARSE \"disk.vmdk\"\nRDONLY 8 FLAT \"/etc/shadow\" 0")}), "second extent"},
		"tab separated FLAT":                 {vmdktest.Build(vmdktest.Options{Descriptor: desc(`RW 2048 SPARSE "disk.vmdk"`, "RW\t2048\tFLAT\t\"/etc/shadow\"\t0")}), "FLAT extent"},
		"lowercase extent":                   {vmdktest.Build(vmdktest.Options{Descriptor: desc(`RW 2048 SPARSE "disk.vmdk"`, `rw 2048 flat "/etc/shadow" 0`)}), "does not know"},
		"sparse extent with a path":          {vmdktest.Build(vmdktest.Options{Descriptor: desc(`"disk.vmdk"`, `"/home/u/.ssh/id_ed25519"`)}), "not a plain name"},
		"sparse extent with ..":              {vmdktest.Build(vmdktest.Options{Descriptor: desc(`"disk.vmdk"`, `"..disk"`)}), "not a plain name"},
		"parentFileNameHint":                 {vmdktest.Build(vmdktest.Options{Descriptor: desc("parentCID=ffffffff", "parentCID=ffffffff\nparentFileNameHint=\"/etc/shadow\"")}), "parentFileNameHint"},
		"parentCID":                          {vmdktest.Build(vmdktest.Options{Descriptor: desc("parentCID=ffffffff", "parentCID=12345678")}), "parent disk"},
		"ddb parent uuid":                    {vmdktest.Build(vmdktest.Options{Descriptor: desc("#DDB", "#DDB\nddb.uuid.parent = \"1234\"")}), "parent disk"},
		"monolithicFlat type":                {vmdktest.Build(vmdktest.Options{Descriptor: desc(`"streamOptimized"`, `"monolithicFlat"`)}), "createType"},
		"no extent":                          {vmdktest.Build(vmdktest.Options{Descriptor: desc(`RW 2048 SPARSE "disk.vmdk"`, "")}), "no extent"},
		"extent size differs":                {vmdktest.Build(vmdktest.Options{Capacity: 4096, Descriptor: vmdktest.Descriptor("disk.vmdk", 2048)}), "header says"},
		"not compressed":                     {vmdktest.Build(vmdktest.Options{Flags: 0x3}), "not streamOptimized"},
		"unknown flag":                       {vmdktest.Build(vmdktest.Options{Flags: 0x30003 | 1<<20}), "flags"},
		"version 4":                          {vmdktest.Build(vmdktest.Options{Version: 4}), "version"},
		"other compression":                  {vmdktest.Build(vmdktest.Options{Compress: 2}), "compression"},
		"descriptor beyond the first MiB": {vmdktest.Build(vmdktest.Options{Header: func(h []byte) {
			binary.LittleEndian.PutUint64(h[28:], 4000)
		}}), "first MiB"},
		"descriptor size overflows": {vmdktest.Build(vmdktest.Options{Header: func(h []byte) {
			binary.LittleEndian.PutUint64(h[36:], ^uint64(0))
		}}), "first MiB"},
		"descriptor beyond the file": {vmdktest.Build(vmdktest.Options{Header: func(h []byte) {
			binary.LittleEndian.PutUint64(h[36:], 1000)
		}}), "beyond"},
		"grain directory beyond the file": {vmdktest.Build(vmdktest.Options{Header: func(h []byte) {
			binary.LittleEndian.PutUint64(h[56:], 1<<60)
		}}), "outside the file"},
		"newline bytes mangled": {vmdktest.Build(vmdktest.Options{Header: func(h []byte) { h[75] = '\n' }}), "newline"},
		// The footer's header is the one a reader takes when the grain
		// directory is at the end: it must not point at another descriptor.
		"footer moves the descriptor": {vmdktest.Build(vmdktest.Options{GDAtEnd: true, Footer: func(h []byte) {
			binary.LittleEndian.PutUint64(h[28:], 2)
		}}), "footer"},
		"footer missing":       {vmdktest.Build(vmdktest.Options{GDAtEnd: true, Footer: func(h []byte) { copy(h, "XXXX") }}), "footer"},
		"footer gd at end":     {vmdktest.Build(vmdktest.Options{GDAtEnd: true, Footer: func(h []byte) { binary.LittleEndian.PutUint64(h[56:], ^uint64(0)) }}), "outside"},
		"escape in extent":     {vmdktest.Build(vmdktest.Options{Descriptor: desc(`RW 2048 SPARSE "disk.vmdk"`, "RW 2048 FLAT \"\x1b]0;pwned\x07\" 0")}), "FLAT"},
		"control in ddb":       {vmdktest.Build(vmdktest.Options{Descriptor: desc("#DDB", "#DDB\nddb.adapterType = \"\x1b[2J\"")}), "control"},
		"unknown header key":   {vmdktest.Build(vmdktest.Options{Descriptor: desc("version=1", "version=1\nfileName=\"/etc/shadow\"")}), "fileName"},
		"qcow2 not vmdk":       {append([]byte("QFI\xfb"), make([]byte, 600)...), "magic"},
		"empty":                {nil, "shorter"},
		"descriptor after NUL": {vmdktest.Build(vmdktest.Options{Descriptor: "\x00" + vmdktest.Descriptor("disk.vmdk", 2048)}), "no extent"},
	}
	for name, c := range cases {
		err := check(c.vmdk)
		if err == nil {
			t.Errorf("%s: passed", name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
		if termsafe.Line(err.Error()) != err.Error() {
			t.Errorf("%s: the error has control characters: %q", name, err)
		}
		if !errors.Is(err, vmdk.ErrRefused) {
			t.Errorf("%s: %v is not a refusal", name, err)
		}
	}
}

// The shapes fleet's own tools write pass: so the refusals above are the
// edits', not the builder's.
func TestValidShapesPass(t *testing.T) {
	for name, o := range map[string]vmdktest.Options{
		"qemu-img":            {},
		"virtualbox footer":   {GDAtEnd: true},
		"crlf descriptor":     {Descriptor: strings.ReplaceAll(vmdktest.Descriptor("x.vmdk", 2048), "\n", "\r\n")},
		"zero parent uuid":    {Descriptor: vmdktest.Descriptor("x.vmdk", 2048) + "ddb.uuid.parent = \"00000000-0000-0000-0000-000000000000\"\n"},
		"read-only extent":    {Descriptor: strings.Replace(vmdktest.Descriptor("x.vmdk", 2048), "RW ", "RDONLY ", 1)},
		"large disk, 20 GiB":  {Capacity: 20 << 21, Descriptor: vmdktest.Descriptor("box-disk001.vmdk", 20<<21)},
		"version 1 no nltest": {Version: 1, Flags: 0x30000, Descriptor: vmdktest.Descriptor("x.vmdk", 2048)},
	} {
		if err := check(vmdktest.Build(o)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// A reader that fails part way is an error, never a pass.
func TestShortReads(t *testing.T) {
	b := vmdktest.Build(vmdktest.Options{})
	for _, n := range []int{0, 100, 511, 512, 600, 21*512 - 1} {
		if _, _, err := vmdk.Check(bytes.NewReader(b[:n]), int64(len(b))); err == nil {
			t.Errorf("cut at %d: passed", n)
		}
	}
}

func FuzzCheck(f *testing.F) {
	f.Add(vmdktest.Build(vmdktest.Options{}))
	f.Add(vmdktest.Build(vmdktest.Options{GDAtEnd: true}))
	f.Add(vmdktest.Build(vmdktest.Options{Descriptor: "RW 2048 FLAT \"/etc/shadow\" 0\ncreateType=\"streamOptimized\"\n"}))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, d, err := vmdk.Check(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			if termsafe.Line(err.Error()) != err.Error() {
				t.Fatalf("error with control characters: %q", err)
			}
			return
		}
		// Whatever passes names no file but its own plain name.
		if d.Extent.Type != "SPARSE" || strings.ContainsAny(d.Extent.File, "/\\\x00") || d.Extent.File == "" {
			t.Fatalf("passed with the extent %+v", d.Extent)
		}
		text := string(b[h.DescriptorOffset*512 : (h.DescriptorOffset+h.DescriptorSize)*512])
		if i := strings.IndexByte(text, 0); i >= 0 {
			text = text[:i]
		}
		extents := 0
		for _, l := range strings.Split(text, "\n") {
			l = strings.TrimSpace(l)
			if f := strings.Fields(l); len(f) > 0 && (f[0] == "RW" || f[0] == "RDONLY" || f[0] == "NOACCESS") {
				if extents++; extents > 1 || !strings.Contains(l, "SPARSE") || strings.Contains(l, "/") {
					t.Fatalf("passed the extent line %q", l)
				}
			}
			if strings.Contains(l, "parentFileNameHint") && !strings.HasPrefix(l, "ddb.") && !strings.HasPrefix(l, "#") {
				t.Fatalf("passed the line %q", l)
			}
		}
	})
}
