package qemu

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A sparse file with some data ends up whole in the page cache, its
// holes included, and a second call finds nothing to do.
func TestCacheWholeCachesHoles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "memory")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 8 << 20
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("data"), 3<<20)
	f.Sync()
	unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	m, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	resident := func() int {
		v := make([]byte, size/os.Getpagesize())
		if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), size, uintptr(unsafe.Pointer(&v[0]))); e != 0 {
			t.Fatal(e)
		}
		n := 0
		for _, b := range v {
			n += int(b & 1)
		}
		return n
	}
	if resident() == len(m)/os.Getpagesize() {
		t.Skip("the file stayed cached after FADV_DONTNEED")
	}
	if err := cacheWhole(context.Background(), path); err != nil {
		t.Fatal(err)
	}
	if n := resident(); n != len(m)/os.Getpagesize() {
		t.Errorf("%d of %d pages cached", n, len(m)/os.Getpagesize())
	}
	if string(m[3<<20:3<<20+4]) != "data" {
		t.Fatalf("the file reads %q", m[3<<20:3<<20+4])
	}
}

// A cancelled capture stops caching, with its context's error.
func TestCacheWholeStopsWhenCancelled(t *testing.T) {
	path := filepath.Join(t.TempDir(), "memory")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 256<<20); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := cacheWhole(ctx, path); !errors.Is(err, context.Canceled) {
		t.Errorf("err %v, want the cancellation", err)
	}
}
