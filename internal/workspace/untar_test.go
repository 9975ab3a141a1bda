package workspace

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type entry struct {
	name, body, link string
	typ              byte
	mode             int64
}

func tarOf(t *testing.T, es ...entry) *bytes.Buffer {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range es {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Size: int64(len(e.body)), Linkname: e.link}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if e.typ == tar.TypeDir {
			h.Mode = 0o755
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	tw.Close()
	return &b
}

func TestUntarWritesResultsAndNothingElse(t *testing.T) {
	outside := t.TempDir()
	dir := t.TempDir()
	n, err := Untar(tarOf(t,
		entry{name: "./", typ: tar.TypeDir},
		entry{name: "./src/main.go", body: "package main\n", typ: tar.TypeReg},
		entry{name: "./run.sh", body: "#!/bin/sh\n", typ: tar.TypeReg, mode: 0o4755},
		entry{name: "./docs", typ: tar.TypeDir},
	), dir, 1<<20, 1000)
	if err != nil || n != 2 {
		t.Fatalf("n=%d err=%v", n, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "src", "main.go")); string(b) != "package main\n" {
		t.Errorf("content %q", b)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "run.sh")); fi.Mode()&os.ModeSetuid != 0 {
		t.Error("setuid bit kept")
	}

	for name, stream := range map[string]*bytes.Buffer{
		"dot-dot":           tarOf(t, entry{name: "../escaped", body: "x", typ: tar.TypeReg}),
		"absolute":          tarOf(t, entry{name: filepath.Join(outside, "escaped"), body: "x", typ: tar.TypeReg}),
		"through a symlink": tarOf(t, entry{name: "out", link: outside, typ: tar.TypeSymlink}, entry{name: "out/escaped", body: "x", typ: tar.TypeReg}),
	} {
		Untar(stream, t.TempDir(), 1<<20, 1000)
		if _, err := os.Stat(filepath.Join(outside, "escaped")); err == nil {
			t.Fatalf("%s: a file landed outside the results folder", name)
		}
		if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "escaped")); err == nil {
			t.Fatalf("%s: a file landed beside the results folder", name)
		}
	}
	_, err = Untar(tarOf(t, entry{name: "big", body: string(make([]byte, 2048)), typ: tar.TypeReg}), t.TempDir(), 1024+3*512, 1000)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("size limit: %v", err)
	}
}

// countEntries counts what a results folder holds, itself excluded.
func countEntries(t *testing.T, dir string) int {
	t.Helper()
	n := -1
	filepath.Walk(dir, func(string, os.FileInfo, error) error { n++; return nil })
	return n
}

// Every entry counts against the caps, whatever its kind: a flood of
// empty folders, symlinks, empty files, hard links or devices stops at
// the entry cap, and a stream of headers alone is charged its bytes.
func TestUntarCountsEveryEntry(t *testing.T) {
	const flood, limit = 10000, 100
	for _, kind := range []struct {
		name string
		make func(i int) entry
	}{
		{"folders", func(i int) entry { return entry{name: fmt.Sprintf("d%d/", i), typ: tar.TypeDir} }},
		{"symlinks", func(i int) entry { return entry{name: fmt.Sprintf("l%d", i), link: "x", typ: tar.TypeSymlink} }},
		{"empty files", func(i int) entry { return entry{name: fmt.Sprintf("f%d", i), typ: tar.TypeReg} }},
		{"hard links", func(i int) entry { return entry{name: fmt.Sprintf("h%d", i), link: "f0", typ: tar.TypeLink} }},
		{"fifos", func(i int) entry { return entry{name: fmt.Sprintf("p%d", i), typ: tar.TypeFifo} }},
	} {
		t.Run(kind.name, func(t *testing.T) {
			es := make([]entry, flood)
			for i := range es {
				es[i] = kind.make(i)
			}
			stream := tarOf(t, es...)
			dir := t.TempDir()
			_, err := Untar(bytes.NewReader(stream.Bytes()), dir, 1<<30, limit)
			if !errors.Is(err, ErrTooMany) || !strings.Contains(err.Error(), "--max-entries") {
				t.Fatalf("%d %s against a cap of %d: %v", flood, kind.name, limit, err)
			}
			if n := countEntries(t, dir); n > limit {
				t.Fatalf("%d entries made past a cap of %d", n, limit)
			}
			// The bytes: a 1-byte cap lets nothing through.
			dir = t.TempDir()
			if _, err := Untar(bytes.NewReader(stream.Bytes()), dir, 1, 1<<30); !errors.Is(err, ErrTooLarge) {
				t.Fatalf("a 1-byte cap: %v", err)
			}
			if n := countEntries(t, dir); n != 0 {
				t.Fatalf("a 1-byte cap let %d entries through", n)
			}
			// Within both caps the same kind of stream unpacks whole.
			few := tarOf(t, es[:limit]...)
			if _, err := Untar(few, t.TempDir(), int64(few.Len()), limit); err != nil {
				t.Fatalf("within the caps: %v", err)
			}
		})
	}
}

// Folders a name makes on its way count too: one file 5,000 folders
// deep, with no folder entries before it, is refused at the cap.
func TestUntarCountsTheFoldersANameMakes(t *testing.T) {
	deep := strings.Repeat("a/", 5000) + "f"
	dir := t.TempDir()
	_, err := Untar(tarOf(t, entry{name: deep, body: "x", typ: tar.TypeReg}), dir, 1<<30, 1000)
	if !errors.Is(err, ErrTooMany) {
		t.Fatalf("got %v", err)
	}
	if n := countEntries(t, dir); n > 1000 {
		t.Fatalf("%d folders made past a cap of 1000", n)
	}
	// An honest stream lists every folder before what is in it: those
	// are counted once.
	var es []entry
	for i := 1; i <= 50; i++ {
		es = append(es, entry{name: strings.Repeat("b/", i), typ: tar.TypeDir})
	}
	es = append(es, entry{name: strings.Repeat("b/", 50) + "f", body: "x", typ: tar.TypeReg})
	if n, err := Untar(tarOf(t, es...), t.TempDir(), 1<<30, 51); err != nil || n != 1 {
		t.Fatalf("an honest deep stream: %d %v", n, err)
	}
}

// paxSparse is a tar stream of n entries, each a PAX 1.0 sparse file that
// claims 2 GB and carries 1 byte: archive/tar reads the holes as zeros
// the stream never sent. Written by hand, as a hostile guest's tar would.
func paxSparse(n int) []byte {
	var out bytes.Buffer
	block := func(name string, size int64, typ byte) []byte {
		b := make([]byte, 512)
		copy(b, name)
		copy(b[100:], "0000644\x00")
		copy(b[108:], "0000000\x00")
		copy(b[116:], "0000000\x00")
		copy(b[124:], fmt.Sprintf("%011o\x00", size))
		copy(b[136:], "00000000000\x00")
		b[156] = typ
		copy(b[257:], "ustar\x0000")
		copy(b[148:], "        ")
		sum := 0
		for _, c := range b {
			sum += int(c)
		}
		copy(b[148:], fmt.Sprintf("%06o\x00 ", sum))
		return b
	}
	record := func(k, v string) string {
		l := len(k) + len(v) + 3
		for {
			s := fmt.Sprintf("%d %s=%s\n", l, k, v)
			if len(s) == l {
				return s
			}
			l = len(s)
		}
	}
	pad := func(b []byte) []byte { return append(b, make([]byte, (512-len(b)%512)%512)...) }
	for i := 0; i < n; i++ {
		pax := record("GNU.sparse.major", "1") + record("GNU.sparse.minor", "0") +
			record("GNU.sparse.name", fmt.Sprintf("big%d", i)) + record("GNU.sparse.realsize", "2000000000")
		out.Write(block("pax", int64(len(pax)), 'x'))
		out.Write(pad([]byte(pax)))
		// The sparse map (1 region: offset 0, 1 byte), then the data.
		data := pad([]byte("1\n0\n1\n"))
		data = append(data, pad([]byte("A"))...)
		out.Write(block(fmt.Sprintf("big%d", i), int64(len(data)), '0'))
		out.Write(data)
	}
	out.Write(make([]byte, 1024))
	return out.Bytes()
}

// The stream's holes would be written in full: a few KiB that would
// write gigabytes are refused, and nothing of them is left.
func TestUntarRefusesSparseFiles(t *testing.T) {
	stream := paxSparse(3)
	if tr := tar.NewReader(bytes.NewReader(stream)); true {
		h, err := tr.Next()
		if err != nil || h.Size != 2000000000 {
			t.Fatalf("the crafted stream does not read as a 2 GB file: %+v %v", h, err)
		}
	}
	dir := t.TempDir()
	_, err := Untar(bytes.NewReader(stream), dir, 1<<30, 1<<20)
	if err == nil || !strings.Contains(err.Error(), "sparse") {
		t.Fatalf("a sparse stream: %v", err)
	}
	var total int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, _ error) error {
		if fi != nil && !fi.IsDir() {
			total += fi.Size()
		}
		return nil
	})
	if total != 0 {
		t.Fatalf("%d bytes written", total)
	}
}

// Whatever an entry claims, the bytes written add up against the cap.
func TestUntarCountsWhatIsWritten(t *testing.T) {
	es := []entry{{name: "a", body: strings.Repeat("x", 600), typ: tar.TypeReg}, {name: "b", body: strings.Repeat("y", 600), typ: tar.TypeReg}}
	stream := tarOf(t, es...)
	if _, err := Untar(bytes.NewReader(stream.Bytes()), t.TempDir(), 1000, 100); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("1,200 bytes of files against a 1,000-byte cap: %v", err)
	}
}
