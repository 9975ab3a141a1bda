package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/agentfleet/agentfleet/internal/qcow2/qcow2test"
)

type img = qcow2test.Options

// put32 and put64 overwrite header fields in place: a hostile header is
// any bytes at all, not only what a writer would make.
func put32(b []byte, off int, v uint32) []byte { binary.BigEndian.PutUint32(b[off:], v); return b }
func put64(b []byte, off int, v uint64) []byte { binary.BigEndian.PutUint64(b[off:], v); return b }

func judgeBytes(b []byte, want Expect) (*Header, string) {
	return judge(bytes.NewReader(b), int64(len(b)), want, "/nonexistent")
}

func TestAcceptsWhatQEMUWritesForAStandaloneDisk(t *testing.T) {
	for name, b := range map[string][]byte{
		"version 3":                   qcow2test.Image(img{}),
		"version 2":                   qcow2test.Image(img{Version: 2, Size: 10 << 30}),
		"feature name table":          qcow2test.Image(img{FeatureTable: true}),
		"dirty (lazy refcounts)":      qcow2test.Image(img{Incompatible: IncompatDirty, Compatible: CompatLazyRefcounts}),
		"zstd compression (bit 3)":    qcow2test.Image(img{Incompatible: IncompatCompression, CompressionType: 1}),
		"extended L2 entries (bit 4)": qcow2test.Image(img{Incompatible: IncompatExtendedL2, Size: 50 << 30}),
		"unknown compatible bits":     qcow2test.Image(img{Compatible: 1<<63 | 1<<7}),
		"bitmaps, unknown autoclear":  qcow2test.Image(img{Autoclear: AutoclearBitmaps | 1<<40}),
		"bitmaps extension":           qcow2test.Image(img{Autoclear: AutoclearBitmaps, Extensions: []qcow2test.Ext{{Type: extBitmaps, Data: make([]byte, 24)}}}),
		"512-byte clusters":           qcow2test.Image(img{ClusterBits: 9, Size: 1 << 30}),
		"2 MiB clusters":              qcow2test.Image(img{ClusterBits: 21, Size: 1 << 40}),
		"an 8 TiB disk":               qcow2test.Image(img{Size: 8 << 40}),
	} {
		h, why := judgeBytes(b, Expect{})
		if why != "" {
			t.Errorf("%s refused: %s", name, why)
			continue
		}
		if h.BackingFile != "" || h.DataFile != "" {
			t.Errorf("%s: %+v", name, h)
		}
	}
}

func TestRefusesWhatMakesQEMUReadAnotherFile(t *testing.T) {
	key := "/root/.ssh/id_ed25519"
	v3 := func(o img) []byte { return qcow2test.Image(o) }
	v2 := func(o img) []byte { o.Version = 2; return qcow2test.Image(o) }
	for name, tc := range map[string]struct {
		b    []byte
		want string
	}{
		"v3 backing file, host key":      {v3(img{Backing: key}), `names the backing file "/root/.ssh/id_ed25519"`},
		"v2 backing file, host key":      {v2(img{Backing: key}), `names the backing file "/root/.ssh/id_ed25519"`},
		"backing file with a format":     {v3(img{Backing: key, BackingFormat: "raw"}), `backing file "/root/.ssh/id_ed25519"`},
		"v2 backing with a format":       {v2(img{Backing: key, BackingFormat: "raw"}), `backing file "/root/.ssh/id_ed25519"`},
		"backing json: protocol":         {v3(img{Backing: `json:{"file.driver":"file","file.filename":"/etc/shadow"}`}), "names the backing file"},
		"backing nbd: protocol":          {v3(img{Backing: "nbd://10.0.0.1/x"}), "names the backing file"},
		"a backing format alone":         {v3(img{BackingFormat: "raw"}), "names the backing file"},
		"data file extension":            {v3(img{DataFile: key, Incompatible: IncompatDataFile}), `external file "/root/.ssh/id_ed25519"`},
		"data file extension, no bit":    {v3(img{DataFile: key}), `external file "/root/.ssh/id_ed25519"`},
		"data file bit, no extension":    {v3(img{Incompatible: IncompatDataFile}), "external file"},
		"raw external data autoclear":    {v3(img{Autoclear: AutoclearRawData}), "external file"},
		"data file and backing file":     {v3(img{DataFile: "/dev/sda", Incompatible: IncompatDataFile, Backing: key}), "external file"},
		"unknown incompatible bit 5":     {v3(img{Incompatible: 1 << 5}), "incompatible feature bits fleet does not know: 5"},
		"unknown incompatible bit 63":    {v3(img{Incompatible: 1<<63 | IncompatDirty}), "does not know: 63"},
		"unknown bit named in the file":  {v3(img{Incompatible: 1 << 9, Extensions: []qcow2test.Ext{{Type: extFeatureTable, Data: feature(0, 9, "remote data")}}}), `9 "remote data"`},
		"corrupt":                        {v3(img{Incompatible: IncompatCorrupt}), "corrupt"},
		"AES encryption":                 {v3(img{CryptMethod: 1}), "encrypted (method 1)"},
		"LUKS encryption":                {v3(img{CryptMethod: 2}), "encrypted (method 2)"},
		"crypto header extension":        {v3(img{Extensions: []qcow2test.Ext{{Type: extCrypto, Data: make([]byte, 16)}}}), "encrypted"},
		"zstd without its bit":           {v3(img{CompressionType: 1}), "without its incompatible bit"},
		"compression bit, zlib type":     {v3(img{Incompatible: IncompatCompression}), "is not zstd"},
		"unknown compression type":       {v3(img{Incompatible: IncompatCompression, CompressionType: 7}), "compression type 7"},
		"unknown header extension":       {v3(img{Extensions: []qcow2test.Ext{{Type: 0x12345678, Data: []byte("x")}}}), "header extension 0x12345678"},
		"duplicate extension":            {v3(img{BackingFormat: "qcow2", Extensions: []qcow2test.Ext{{Type: extBackingFormat, Data: []byte("raw")}}}), "twice"},
		"feature table of odd size":      {v3(img{Extensions: []qcow2test.Ext{{Type: extFeatureTable, Data: make([]byte, 47)}}}), "multiple of 48"},
		"backing name with escapes":      {v3(img{Backing: "/etc/\x1b[2J\x1b]0;pwned\x07passwd\nwarning: ok"}), `\e[2J`},
		"size beyond the default limit":  {v3(img{Size: uint64(DefaultMaxSize) + 1}), "beyond"},
		"size 0":                         {put64(v3(img{}), 24, 0), "virtual size is 0"},
		"size 2^63":                      {put64(v3(img{}), 24, 1<<63), "absurd"},
		"qcow version 1":                 {put32(v3(img{}), 4, 1), "version 1"},
		"qcow version 4":                 {put32(v3(img{}), 4, 4), "version 4"},
		"cluster_bits 8":                 {put32(v3(img{}), 20, 8), "cluster_bits 8"},
		"cluster_bits 22":                {put32(v3(img{}), 20, 22), "cluster_bits 22"},
		"cluster_bits 2^32-1":            {put32(v3(img{}), 20, 0xffffffff), "cluster_bits"},
		"header_length 100":              {put32(v3(img{}), 100, 100), "header_length 100"},
		"header_length 113":              {put32(v3(img{}), 100, 113), "header_length 113"},
		"huge header_length":             {put32(v3(img{}), 100, 0xfffffff8), "header_length"},
		"header_length past the cluster": {put32(v3(img{ClusterBits: 9}), 100, 1024), "header_length 1024"},
		"refcount_order 7":               {put32(v3(img{}), 96, 7), "refcount_order 7"},
		"L1 too small for the size":      {put64(v3(img{}), 24, 1<<40), "cannot map its virtual size"},
		"L1 larger than QEMU reads":      {put32(v3(img{}), 36, 1<<23), "L1 table"},
		"L1 unaligned":                   {put64(v3(img{}), 40, 3<<16+8), "L1 table"},
		"L1 in the header cluster":       {put64(v3(img{}), 40, 0), "L1 table"},
		"L1 past the end":                {put64(v3(img{}), 40, 1<<40), "L1 table"},
		"L1 offset wraps":                {put64(v3(img{}), 40, 0xffffffffffff0000), "L1 table"},
		"no refcount table":              {put32(v3(img{}), 56, 0), "refcount table"},
		"huge refcount table":            {put32(v3(img{}), 56, 1<<20), "refcount table"},
		"refcount table past the end":    {put64(v3(img{}), 48, 100<<16), "refcount table"},
		"refcount table unaligned":       {put64(v3(img{}), 48, 1<<16+512), "refcount table"},
		"too many snapshots":             {put32(v3(img{}), 60, 1<<20), "snapshots"},
		"snapshots past the end":         {put64(put32(v3(img{}), 60, 3), 64, 1<<30), "snapshot table"},
		"backing length 0 at an offset":  {put64(v3(img{}), 8, 0x200), "backing file name"},
		"backing length 2000":            {put32(v3(img{Backing: key}), 16, 2000), "backing file name"},
		"backing offset past the header": {put64(v3(img{Backing: key}), 8, 1<<16), "backing file name"},
		"backing name in the header":     {put64(v3(img{Backing: key}), 8, 16), "backing file name"},
		"backing length, no offset":      {put32(v3(img{}), 16, 5), "without an offset"},
		"extension past the cluster":     {put32(v3(img{BackingFormat: "raw"}), 116, 1<<20), "past the end"},
		"backing after an extension":     {v3(img{Backing: key, Extensions: []qcow2test.Ext{{Type: extBitmaps, Data: make([]byte, 64)}}}), "backing file"},
	} {
		h, why := judgeBytes(tc.b, Expect{})
		if why == "" {
			t.Errorf("%s accepted: %+v", name, h)
			continue
		}
		if !strings.Contains(why, tc.want) {
			t.Errorf("%s: %q, want %q", name, why, tc.want)
		}
		if strings.ContainsAny(why, "\n\r\x1b\x07") {
			t.Errorf("%s: the reason is not one clean line: %q", name, why)
		}
	}
}

func feature(typ, bit byte, name string) []byte {
	e := make([]byte, 48)
	e[0], e[1] = typ, bit
	copy(e[2:], name)
	return e
}

// A file cut off anywhere is refused: inside the header, its
// extensions, its backing name or its tables.
func TestRefusesATruncationAtEveryLength(t *testing.T) {
	for _, o := range []img{{ClusterBits: 12, FeatureTable: true}, {ClusterBits: 12, Version: 2}, {ClusterBits: 9, Backing: "/x", BackingFormat: "qcow2"}} {
		b := qcow2test.Image(o)
		want := Expect{Backing: o.Backing}
		if _, why := judgeBytes(b, want); why != "" {
			t.Fatalf("the whole file is refused: %s", why)
		}
		for n := 0; n < len(b); n++ {
			if h, why := judgeBytes(b[:n], want); why == "" {
				t.Fatalf("%+v cut at %d of %d accepted: %+v", o, n, len(b), h)
			}
		}
	}
}

func TestRefusesWhatIsNotQcow2(t *testing.T) {
	for name, tc := range map[string]struct {
		b    []byte
		want string
	}{
		"empty":           {nil, "not a qcow2"},
		"zeros":           {make([]byte, 4096), "not a qcow2"},
		"an ELF":          {append([]byte("\x7fELF\x02\x01\x01"), make([]byte, 200)...), "not a qcow2"},
		"magic alone":     {[]byte("QFI\xfb"), "cut off"},
		"magic, version":  {[]byte("QFI\xfb\x00\x00\x00\x03"), "cut off"},
		"VMDK":            {append([]byte("KDMV"), make([]byte, 508)...), "VMDK"},
		"VMDK descriptor": {[]byte("# Disk DescriptorFile\nparentFileNameHint=\"/etc/shadow\"\n"), "VMDK descriptor"},
		"QED":             {append([]byte("QED\x00"), make([]byte, 200)...), "QED"},
		"VHDX":            {[]byte("vhdxfile" + strings.Repeat("\x00", 100)), "VHDX"},
		"LUKS":            {append([]byte("LUKS\xba\xbe"), make([]byte, 100)...), "LUKS"},
	} {
		_, why := judgeBytes(tc.b, Expect{Format: QCOW2})
		if !strings.Contains(why, tc.want) {
			t.Errorf("%s: %q, want %q", name, why, tc.want)
		}
	}
}

func TestRawMeansRaw(t *testing.T) {
	mbr := make([]byte, 4096)
	mbr[510], mbr[511] = 0x55, 0xaa
	for name, b := range map[string][]byte{"zeros": make([]byte, 4096), "an MBR": mbr, "text": []byte("hello")} {
		if _, why := judgeBytes(b, Expect{Format: Raw}); why != "" {
			t.Errorf("raw %s refused: %s", name, why)
		}
	}
	for name, b := range map[string][]byte{
		"qcow2": qcow2test.Image(img{}), "qcow2 with a backing file": qcow2test.Image(img{Backing: "/etc/shadow"}),
		"VMDK descriptor": []byte("# Disk DescriptorFile\n"), "VDI": append(make([]byte, 0x40), 0x7f, 0x10, 0xda, 0xbe),
	} {
		if _, why := judgeBytes(b, Expect{Format: Raw}); !strings.Contains(why, "a raw disk was expected") {
			t.Errorf("%s as raw: %q", name, why)
		}
	}
	if _, why := judgeBytes(qcow2test.Image(img{}), Expect{Format: "vmdk"}); why == "" {
		t.Error("a format fleet cannot check was taken")
	}
}

// A warm template is an overlay on its image's disk: that backing file,
// as qcow2, and no other.
func TestAnOverlayMayNameOnlyTheDiskItIsFor(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "disk.qcow2")
	qcow2test.Write(base, img{})
	tpl := filepath.Join(dir, "warm", "k")
	os.MkdirAll(tpl, 0o755)
	overlay := filepath.Join(tpl, "disk.qcow2")
	for name, tc := range map[string]struct {
		o  img
		ok bool
	}{
		"the image's disk":        {img{Backing: base, BackingFormat: "qcow2"}, true},
		"the same, relative":      {img{Backing: "../../disk.qcow2", BackingFormat: "qcow2"}, true},
		"the same, uncleaned":     {img{Backing: dir + "//warm/../disk.qcow2", BackingFormat: "qcow2"}, true},
		"another file":            {img{Backing: "/etc/shadow", BackingFormat: "qcow2"}, false},
		"the disk, as raw":        {img{Backing: base, BackingFormat: "raw"}, false},
		"the disk, no format":     {img{Backing: base}, false},
		"no backing file":         {img{}, false},
		"and a data file":         {img{Backing: base, BackingFormat: "qcow2", DataFile: "/etc/shadow", Incompatible: IncompatDataFile}, false},
		"the disk, unknown bit 6": {img{Backing: base, BackingFormat: "qcow2", Incompatible: 1 << 6}, false},
	} {
		qcow2test.Write(overlay, tc.o)
		_, err := Check(overlay, Expect{Backing: base})
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestCheckJudgesTheFileItselfNeverWhatItPointsAt(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.qcow2")
	qcow2test.Write(good, img{})
	if _, err := Check(good, Expect{}); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.qcow2")
	os.Symlink(good, link)
	fifo := filepath.Join(dir, "fifo.qcow2")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	for name, p := range map[string]string{"a symlink to a good disk": link, "a FIFO": fifo, "a directory": dir, "/dev/zero": "/dev/zero"} {
		_, err := Check(p, Expect{})
		if !errors.Is(err, ErrRefused) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := Check(filepath.Join(dir, "missing"), Expect{}); err == nil || errors.Is(err, ErrRefused) {
		t.Errorf("a missing file: %v", err)
	}
	bad := filepath.Join(dir, "bad\x1b[31m.qcow2")
	qcow2test.Write(bad, img{Backing: "/root/.ssh/id_ed25519"})
	_, err := Check(bad, Expect{})
	var re *RefusedError
	if !errors.As(err, &re) || strings.ContainsAny(err.Error(), "\x1b\n") || !strings.HasPrefix(err.Error(), "refused disk ") {
		t.Fatalf("%q", err)
	}
}

// Real files from qemu-img, when it is installed.
func TestAgainstQemuImg(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img is not installed")
	}
	dir := t.TempDir()
	secret := filepath.Join(dir, "id_ed25519")
	os.WriteFile(secret, []byte("-----BEGIN OPENSSH PRIVATE KEY-----\n"), 0o600)
	n := 0
	run := func(args ...string) string { // options..., size
		t.Helper()
		n++
		out := filepath.Join(dir, fmt.Sprintf("%d.qcow2", n))
		if o, err := exec.Command("qemu-img", append(append([]string{"create", "-q", "-f", "qcow2"}, args[:len(args)-1]...), out, args[len(args)-1])...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img %v: %v %s", args, err, o)
		}
		return out
	}
	plain := run("1G")
	for name, p := range map[string]string{
		"plain":               plain,
		"compat 0.10 (v2)":    run("-o", "compat=0.10", "20G"),
		"zstd":                run("-o", "compression_type=zstd", "1G"),
		"extended L2":         run("-o", "extended_l2=on,cluster_size=128k", "1G"),
		"lazy refcounts":      run("-o", "lazy_refcounts=on", "1G"),
		"512-byte clusters":   run("-o", "cluster_size=512", "100M"),
		"2M clusters, 10 TiB": run("-o", "cluster_size=2M", "10T"),
		"preallocated":        run("-o", "preallocation=metadata", "64M"),
	} {
		if _, err := Check(p, Expect{}); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	conv := filepath.Join(dir, "converted.qcow2")
	if o, err := exec.Command("qemu-img", "convert", "-c", "-O", "qcow2", plain, conv).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, o)
	}
	if _, err := Check(conv, Expect{}); err != nil {
		t.Errorf("converted and compressed: %v", err)
	}
	for name, tc := range map[string]struct{ p, want string }{
		"backing raw key":   {run("-b", secret, "-F", "raw", "1M"), `names the backing file "` + secret + `"`},
		"backing qcow2":     {run("-b", plain, "-F", "qcow2", "1G"), "names the backing file"},
		"external data":     {run("-o", "data_file="+filepath.Join(dir, "data.raw"), "1M"), "external file"},
		"external raw data": {run("-o", "data_file="+filepath.Join(dir, "data2.raw")+",data_file_raw=on", "1M"), "external file"},
	} {
		_, err := Check(tc.p, Expect{})
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// The overlay qemu-img makes for a clone passes as an overlay on its base only.
	ov := run("-b", plain, "-F", "qcow2", "1G")
	if _, err := Check(ov, Expect{Backing: plain}); err != nil {
		t.Errorf("an overlay on its base: %v", err)
	}
	// And the files this package's test helper writes are ones QEMU reads.
	helper := filepath.Join(dir, "helper.qcow2")
	qcow2test.Write(helper, img{FeatureTable: true, Incompatible: IncompatCompression, CompressionType: 1})
	if o, err := exec.Command("qemu-img", "check", helper).CombinedOutput(); err != nil {
		t.Errorf("qemu-img check of the helper's file: %v %s", err, o)
	}
}

func FuzzParse(f *testing.F) {
	for _, o := range []img{{}, {Version: 2}, {FeatureTable: true}, {Backing: "/etc/shadow", BackingFormat: "raw"},
		{DataFile: "/x", Incompatible: IncompatDataFile}, {ClusterBits: 9}, {Incompatible: IncompatCompression, CompressionType: 1}} {
		o.ClusterBits = 9
		f.Add(qcow2test.Image(o))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, why := judgeBytes(b, Expect{})
		if strings.ContainsAny(why, "\n\r\x1b") {
			t.Fatalf("reason is not one clean line: %q", why)
		}
		if why != "" {
			return
		}
		// Whatever passed stands alone and is something QEMU reads alike.
		if h.BackingFile != "" || h.BackingFormat != "" || h.DataFile != "" || h.HasCrypto || h.CryptMethod != 0 ||
			h.Incompatible&^(IncompatDirty|IncompatCompression|IncompatExtendedL2) != 0 || h.Autoclear&AutoclearRawData != 0 ||
			binary.BigEndian.Uint64(b[8:]) != 0 || h.Size == 0 || h.Size > uint64(DefaultMaxSize) {
			t.Fatalf("accepted %+v", h)
		}
	})
}
