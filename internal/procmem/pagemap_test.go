package procmem

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// A file mapped privately by this very process: the pages it writes are
// found, and the pages it only reads (in the page cache, shared) are not.
func TestWrittenPagesOfThisProcess(t *testing.T) {
	ps := os.Getpagesize()
	path := filepath.Join(t.TempDir(), "memory")
	content := make([]byte, 64*ps)
	for i := range content {
		content[i] = byte(i / ps)
	}
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Mapped from page 8 of the file on, so a page's index is its offset
	// in the file, not in the mapping.
	m, err := syscall.Mmap(int(f.Fd()), int64(8*ps), 40*ps, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(m)
	var sum byte
	for i := 0; i < 40; i++ {
		sum += m[i*ps] // every page read: resident, from the page cache
	}
	written := map[int]bool{8: true, 9: true, 20: true, 47: true}
	for page := range written {
		m[(page-8)*ps+100] = sum + 1
	}
	got, err := WrittenPages("", os.Getpid(), path, uint64(len(content)))
	if err != nil {
		t.Fatal(err)
	}
	if got.Count() != len(written) {
		t.Errorf("%d pages written, want %d", got.Count(), len(written))
	}
	for page := 0; page < 64; page++ {
		if got.Has(uint64(page*ps)) != written[page] {
			t.Errorf("page %d: written %v, want %v", page, got.Has(uint64(page*ps)), written[page])
		}
	}
	// Only the first size bytes count.
	small, err := WrittenPages("", os.Getpid(), path, uint64(10*ps))
	if err != nil {
		t.Fatal(err)
	}
	if small.Count() != 2 || small.Has(uint64(20*ps)) {
		t.Errorf("first 10 pages: %d written (want 2: 8, 9)", small.Count())
	}
}

func TestWrittenPagesNotMapped(t *testing.T) {
	_, err := WrittenPages("", os.Getpid(), filepath.Join(t.TempDir(), "nothing"), 4096)
	if err == nil || !strings.Contains(err.Error(), "does not map") {
		t.Fatalf("err = %v, want one saying the file is not mapped", err)
	}
}

// Shared mappings and other files are not the process's copies.
func TestFileMappingsPicksPrivateMappingsOfThePath(t *testing.T) {
	maps := `55d0c0000000-55d0c0100000 r--p 00000000 fd:01 123 /usr/bin/qemu-system-x86_64
7f0000000000-7f0080000000 rw-p 00000000 fd:01 456 /var/t/memory
7f0080000000-7f0080001000 rw-p 80000000 fd:01 456 /var/t/memory (deleted)
7f0100000000-7f0180000000 rw-s 00000000 fd:01 456 /var/t/memory
7f0200000000-7f0200001000 rw-p 00000000 fd:01 457 /var/t/memory2
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
`
	ms, err := fileMappings(strings.NewReader(maps), "/var/t/memory")
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || ms[0].start != 0x7f0000000000 || ms[1].offset != 0x80000000 {
		t.Fatalf("mappings %+v, want the two private ones of /var/t/memory", ms)
	}
	if _, err := fileMappings(strings.NewReader("7f00-7f10 rw-p zz 00:00 0 /x\n"), "/x"); err == nil {
		t.Error("a bad offset was read as a mapping")
	}
}
