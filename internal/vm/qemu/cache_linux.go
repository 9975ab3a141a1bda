package qemu

import (
	"context"
	"errors"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// populateChunk is how much one MADV_POPULATE_READ call faults in, so a
// cancelled capture stops soon.
const populateChunk = 64 << 20

// cacheMapped maps f and faults its pages into the page cache in the
// kernel (MADV_POPULATE_READ, Linux 5.14), only where mincore says some
// are missing: a template's RAM file the host still caches costs a
// mincore call. It reports false, with no error, where the kernel cannot.
func cacheMapped(ctx context.Context, f *os.File) (bool, error) {
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	size := fi.Size()
	if size == 0 {
		return true, nil
	}
	if int64(int(size)) != size {
		return false, nil // too big to map here (a 32-bit host)
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return false, nil
	}
	defer unix.Munmap(m)
	page := int64(os.Getpagesize())
	resident := make([]byte, (size+page-1)/page)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&resident[0]))); e != 0 {
		return populate(ctx, m)
	}
	for i := 0; i < len(resident); {
		if resident[i]&1 != 0 {
			i++
			continue
		}
		j := i
		for j < len(resident) && resident[j]&1 == 0 {
			j++
		}
		if ok, err := populate(ctx, m[int64(i)*page:min(int64(j)*page, size)]); !ok || err != nil {
			return ok, err
		}
		i = j
	}
	return true, nil
}

// populate faults b in, a chunk at a time.
func populate(ctx context.Context, b []byte) (bool, error) {
	for len(b) > 0 {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		n := min(len(b), populateChunk)
		err := unix.Madvise(b[:n], unix.MADV_POPULATE_READ)
		if errors.Is(err, unix.EINVAL) {
			return false, nil // an older kernel: read it instead
		}
		if err != nil {
			return false, err
		}
		b = b[n:]
	}
	return true, nil
}

// inMemoryFS reports whether path is on tmpfs, where caching a file's
// holes allocates memory the host cannot reclaim.
func inMemoryFS(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.TMPFS_MAGIC
}
