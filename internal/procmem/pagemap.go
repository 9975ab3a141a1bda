package procmem

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
)

// Written pages: which pages of a file a process maps privately (a warm
// clone's guest RAM, mapped from its template's RAM file) are copies of
// its own, read from /proc/PID/maps and /proc/PID/pagemap. Those pages
// are what the process holds of the file beyond the host's page cache:
// moving the machine into a fresh process takes them and nothing else.

// pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const (
	pmPresent = 1 << 63
	pmSwapped = 1 << 62
	pmFile    = 1 << 61 // a page of the page cache, or shared anonymous
)

// Pages is a set of a file's pages, by index (offset / PageSize).
type Pages struct {
	PageSize uint64
	pages    uint64 // the file's first pages the set is of
	bits     []uint64
	count    int
}

// Has says whether the page holding byte off of the file is in the set.
func (p Pages) Has(off uint64) bool {
	i := off / p.PageSize
	return i < p.pages && p.bits[i/64]&(1<<(i%64)) != 0
}

// Count is how many pages the set holds.
func (p Pages) Count() int { return p.count }

func (p *Pages) add(i uint64) {
	if i < p.pages && p.bits[i/64]&(1<<(i%64)) == 0 {
		p.bits[i/64] |= 1 << (i % 64)
		p.count++
	}
}

// WrittenPages reads which pages of the first size bytes of the file at
// path process pid has written in its private mappings of it: resident
// pages that are not the page cache's, or pages swapped out (only a
// private copy can be). The process should be stopped, or the answer is
// already old. procRoot "" is /proc.
func WrittenPages(procRoot string, pid int, path string, size uint64) (Pages, error) {
	if procRoot == "" {
		procRoot = "/proc"
	}
	dir := filepath.Join(procRoot, strconv.Itoa(pid))
	maps, err := os.Open(filepath.Join(dir, "maps"))
	if err != nil {
		return Pages{}, err
	}
	defer maps.Close()
	ms, err := fileMappings(maps, filepath.Clean(path))
	if err != nil {
		return Pages{}, fmt.Errorf("maps of process %d: %w", pid, err)
	}
	if len(ms) == 0 {
		return Pages{}, fmt.Errorf("process %d does not map %s privately", pid, path)
	}
	pm, err := os.Open(filepath.Join(dir, "pagemap"))
	if err != nil {
		return Pages{}, err
	}
	defer pm.Close()
	return writtenIn(pm, ms, uint64(os.Getpagesize()), size)
}

// fileMappings are the private mappings of path in maps text.
func fileMappings(r io.Reader, path string) ([]mapping, error) {
	sc := bufio.NewScanner(&io.LimitedReader{R: r, N: MaxText})
	sc.Buffer(make([]byte, 4096), maxLine)
	var out []mapping
	for n := 1; sc.Scan(); n++ {
		if n > MaxMappings {
			return nil, fmt.Errorf("more than %d mappings: %w", MaxMappings, ErrTooLarge)
		}
		m, ok, err := header(sc.Bytes())
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if ok && m.private && m.path == path {
			out = append(out, m)
		}
	}
	return out, sc.Err()
}

// writtenIn reads the pagemap entries of mappings ms (pagemap is indexed
// by virtual page) and sets the file pages below size whose entries say
// the process's own copy.
func writtenIn(pagemap io.ReaderAt, ms []mapping, pageSize, size uint64) (Pages, error) {
	p := Pages{PageSize: pageSize, pages: size / pageSize, bits: make([]uint64, (size/pageSize+63)/64)}
	buf := make([]byte, 8*4096)
	for _, m := range ms {
		if m.start%pageSize != 0 || m.offset%pageSize != 0 {
			return Pages{}, fmt.Errorf("a mapping at %#x not on a page", m.start)
		}
		pages := m.size / pageSize
		for done := uint64(0); done < pages; {
			n := min(pages-done, uint64(len(buf)/8))
			b := buf[:n*8]
			if _, err := pagemap.ReadAt(b, int64((m.start/pageSize+done)*8)); err != nil {
				return Pages{}, fmt.Errorf("pagemap at %#x: %w", m.start+done*pageSize, err)
			}
			for k := uint64(0); k < n; k++ {
				e := binary.NativeEndian.Uint64(b[k*8:])
				if e&pmSwapped != 0 || e&pmPresent != 0 && e&pmFile == 0 {
					p.add(m.offset/pageSize + done + k)
				}
			}
			done += n
		}
	}
	return p, nil
}
