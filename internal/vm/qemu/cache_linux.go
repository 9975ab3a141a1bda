package qemu

import (
	"errors"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// cacheMapped maps f and faults its pages into the page cache in the
// kernel (MADV_POPULATE_READ, Linux 5.14), only where mincore says some
// are missing: a template's RAM file the host still caches costs a
// mincore call. It reports false, with no error, where the kernel cannot.
func cacheMapped(f *os.File) (bool, error) {
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	size := fi.Size()
	if size == 0 {
		return true, nil
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return false, nil
	}
	defer unix.Munmap(m)
	page := int64(os.Getpagesize())
	resident := make([]byte, (size+page-1)/page)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&resident[0]))); e != 0 {
		return populate(m)
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
		if ok, err := populate(m[int64(i)*page : min(int64(j)*page, size)]); !ok || err != nil {
			return ok, err
		}
		i = j
	}
	return true, nil
}

func populate(b []byte) (bool, error) {
	err := unix.Madvise(b, unix.MADV_POPULATE_READ)
	if errors.Is(err, unix.EINVAL) {
		return false, nil // an older kernel: read it instead
	}
	return err == nil, err
}
