package workspace

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
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
	), dir, 1<<20)
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
		Untar(stream, t.TempDir(), 1<<20)
		if _, err := os.Stat(filepath.Join(outside, "escaped")); err == nil {
			t.Fatalf("%s: a file landed outside the results folder", name)
		}
		if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "escaped")); err == nil {
			t.Fatalf("%s: a file landed beside the results folder", name)
		}
	}
	_, err = Untar(tarOf(t, entry{name: "big", body: string(make([]byte, 2048)), typ: tar.TypeReg}), t.TempDir(), 1024)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("size limit: %v", err)
	}
}
