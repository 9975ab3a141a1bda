// Package procmem accounts a process's host memory from its
// /proc/PID/smaps: what is its own, what it shares, and how much of each
// lies in one file's mappings (a warm template's RAM file, which clones
// map privately) or in anonymous memory (the hypervisor's own heap and,
// under TCG, its translation cache).
//
// Every figure is resident memory in bytes. Swapped-out pages are not in
// Unique or Shared (they hold no RAM); Swapped reports them apart.
package procmem

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Bounds on what Read takes: a QEMU process has a few hundred mappings
// and a few hundred KiB of smaps text.
const (
	MaxText     = 64 << 20 // bytes of smaps text
	MaxMappings = 1 << 20
	maxLine     = 64 << 10 // a path is at most PATH_MAX, escaped
	// maxKB is more than any machine's memory (16 PiB): a larger value is
	// not a count.
	maxKB = 1 << 44
)

// ErrTooLarge is wrapped when the text passes MaxText or MaxMappings.
var ErrTooLarge = errors.New("smaps is larger than any process's")

// Counts are one mapping's (or a sum of mappings') pages, in bytes.
type Counts struct {
	Rss, Pss                   uint64
	SharedClean, SharedDirty   uint64
	PrivateClean, PrivateDirty uint64
	// Hugetlb pages are outside the four above.
	SharedHugetlb, PrivateHugetlb uint64
	Swap, SwapPss                 uint64
}

// Private is the resident pages no other process maps.
func (c Counts) Private() uint64 {
	return sat(sat(c.PrivateClean, c.PrivateDirty), c.PrivateHugetlb)
}

// Shared is the resident pages other processes map too.
func (c Counts) Shared() uint64 {
	return sat(sat(c.SharedClean, c.SharedDirty), c.SharedHugetlb)
}

func (c *Counts) add(o Counts) {
	c.Rss, c.Pss = sat(c.Rss, o.Rss), sat(c.Pss, o.Pss)
	c.SharedClean, c.SharedDirty = sat(c.SharedClean, o.SharedClean), sat(c.SharedDirty, o.SharedDirty)
	c.PrivateClean, c.PrivateDirty = sat(c.PrivateClean, o.PrivateClean), sat(c.PrivateDirty, o.PrivateDirty)
	c.SharedHugetlb, c.PrivateHugetlb = sat(c.SharedHugetlb, o.SharedHugetlb), sat(c.PrivateHugetlb, o.PrivateHugetlb)
	c.Swap, c.SwapPss = sat(c.Swap, o.Swap), sat(c.SwapPss, o.SwapPss)
}

// sat adds without wrapping.
func sat(a, b uint64) uint64 {
	if a > math.MaxUint64-b {
		return math.MaxUint64
	}
	return a + b
}

// Usage is a process's memory, summed over its mappings.
type Usage struct {
	Total Counts
	// Anon is the anonymous mappings: no file behind them ([heap],
	// [stack], [anon:NAME] and unnamed ones).
	Anon     Counts
	Mappings int
	files    map[string]Counts // by path, " (deleted)" dropped
	// rwAnon are the read-write, not executable, private anonymous
	// mappings by size in bytes: how a guest's RAM in anonymous memory
	// is told from the rest (TCG's cache is executable).
	rwAnon map[uint64][]Counts
}

// Unique is the resident memory only this process holds: private pages
// of every mapping. For a file mapping these include page-cache pages no
// other process maps (yet).
func (u *Usage) Unique() uint64 { return u.Total.Private() }

// Shared is the resident memory this process maps along with others.
func (u *Usage) Shared() uint64 { return u.Total.Shared() }

// Swapped is this process's share of its pages in swap.
func (u *Usage) Swapped() uint64 { return u.Total.SwapPss }

// File is the sum of path's mappings. The kernel shows resolved paths,
// so path should be too (filepath.EvalSymlinks); a mapping of a file
// deleted since counts as path's.
func (u *Usage) File(path string) Counts {
	if path == "" {
		return Counts{}
	}
	return u.files[filepath.Clean(path)]
}

// SharedWith is the resident pages of path's mappings that others map
// too: for a warm clone, the template RAM it shares with its siblings.
func (u *Usage) SharedWith(path string) uint64 { return u.File(path).Shared() }

// WrittenIn is the private dirty pages of path's mappings: for a file
// mapped privately (a warm clone's template RAM), the pages this process
// wrote, which are its own copies.
func (u *Usage) WrittenIn(path string) uint64 { return u.File(path).PrivateDirty }

// AnonExcept is the private pages of anonymous mappings, leaving out one
// read-write anonymous mapping of exactly size bytes if there is one (a
// guest's RAM when no file backs it; 0 leaves out nothing): what a
// hypervisor holds for itself.
func (u *Usage) AnonExcept(size uint64) uint64 {
	total := u.Anon.Private()
	if size == 0 || len(u.rwAnon[size]) == 0 {
		return total
	}
	// Of several of that size, the one most resident is the guest's.
	var ram uint64
	for _, c := range u.rwAnon[size] {
		ram = max(ram, c.Private())
	}
	return total - ram
}

// ReadPID reads /proc/PID/smaps under procRoot ("" is /proc).
func ReadPID(procRoot string, pid int) (*Usage, error) {
	if procRoot == "" {
		procRoot = "/proc"
	}
	f, err := os.Open(filepath.Join(procRoot, strconv.Itoa(pid), "smaps"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	u, err := Read(f)
	if err != nil {
		return nil, fmt.Errorf("smaps of process %d: %w", pid, err)
	}
	return u, nil
}

// mapping is the one being read.
type mapping struct {
	start, size uint64
	offset      uint64 // in its file
	path        string
	anon        bool
	rw          bool
	private     bool // MAP_PRIVATE: written pages are copies of the mapper's own
	counts      Counts
}

// Read parses smaps text. A line of a counted field that is not a
// number of kB is an error, as is a field before any mapping; fields it
// does not count are skipped.
func Read(r io.Reader) (*Usage, error) {
	u := &Usage{files: map[string]Counts{}, rwAnon: map[uint64][]Counts{}}
	lr := &io.LimitedReader{R: r, N: MaxText + 1}
	sc := bufio.NewScanner(lr)
	sc.Buffer(make([]byte, 4096), maxLine)
	var cur *mapping
	n := 0
	for sc.Scan() {
		n++
		line := sc.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if m, ok, err := header(line); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		} else if ok {
			u.end(cur)
			if u.Mappings++; u.Mappings > MaxMappings {
				return nil, fmt.Errorf("more than %d mappings: %w", MaxMappings, ErrTooLarge)
			}
			cur = &m
			continue
		}
		key, val, ok := bytes.Cut(line, []byte(":"))
		if !ok || bytes.ContainsAny(key, " \t") {
			return nil, fmt.Errorf("line %d: neither a mapping nor a field", n)
		}
		if cur == nil {
			if field(&Counts{}, string(key)) != nil {
				return nil, fmt.Errorf("line %d: %s before any mapping", n, key)
			}
			continue
		}
		dst := field(&cur.counts, string(key))
		if dst == nil {
			continue
		}
		b, err := kB(val)
		if err != nil {
			return nil, fmt.Errorf("line %d: %s: %w", n, key, err)
		}
		*dst = b
	}
	if lr.N <= 0 {
		return nil, fmt.Errorf("more than %d bytes: %w", MaxText, ErrTooLarge)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("line %d: %w", n+1, err)
	}
	u.end(cur)
	return u, nil
}

// end adds a finished mapping to the sums.
func (u *Usage) end(m *mapping) {
	if m == nil {
		return
	}
	u.Total.add(m.counts)
	switch {
	case m.anon:
		u.Anon.add(m.counts)
		if m.rw {
			u.rwAnon[m.size] = append(u.rwAnon[m.size], m.counts)
		}
	case m.path != "":
		c := u.files[m.path]
		c.add(m.counts)
		u.files[m.path] = c
	}
}

// field is where a counted field goes in c, nil for one not counted.
func field(c *Counts, key string) *uint64 {
	switch key {
	case "Rss":
		return &c.Rss
	case "Pss":
		return &c.Pss
	case "Shared_Clean":
		return &c.SharedClean
	case "Shared_Dirty":
		return &c.SharedDirty
	case "Private_Clean":
		return &c.PrivateClean
	case "Private_Dirty":
		return &c.PrivateDirty
	case "Shared_Hugetlb":
		return &c.SharedHugetlb
	case "Private_Hugetlb":
		return &c.PrivateHugetlb
	case "Swap":
		return &c.Swap
	case "SwapPss":
		return &c.SwapPss
	}
	return nil
}

// kB reads " 1234 kB" as bytes.
func kB(val []byte) (uint64, error) {
	f := strings.Fields(string(val))
	if len(f) != 2 || f[1] != "kB" {
		return 0, fmt.Errorf("%q is not a number of kB", strings.TrimSpace(string(val)))
	}
	v, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil || v > maxKB {
		return 0, fmt.Errorf("%q is not a count of kB", f[0])
	}
	return v * 1024, nil
}

// header reads a mapping's first line, "start-end perms offset dev inode
// [path]"; ok is false for a line that is not one (a field).
func header(line []byte) (m mapping, ok bool, err error) {
	s := string(line)
	rest := s
	var f [5]string
	for i := range f {
		rest = strings.TrimLeft(rest, " \t")
		j := strings.IndexAny(rest, " \t")
		if j < 0 {
			j = len(rest)
		}
		f[i], rest = rest[:j], rest[j:]
	}
	lo, hi, isRange := strings.Cut(f[0], "-")
	if !isRange || !hexDigits(lo) || !hexDigits(hi) {
		return mapping{}, false, nil
	}
	start, err1 := strconv.ParseUint(lo, 16, 64)
	end, err2 := strconv.ParseUint(hi, 16, 64)
	if err1 != nil || err2 != nil || end < start {
		return mapping{}, false, fmt.Errorf("bad address range %q", f[0])
	}
	if len(f[1]) != 4 || f[4] == "" {
		return mapping{}, false, fmt.Errorf("bad mapping line %q", clip(s))
	}
	path := strings.TrimLeft(rest, " \t")
	path = strings.TrimSuffix(path, " (deleted)")
	off, err := strconv.ParseUint(f[2], 16, 64)
	if err != nil || !hexDigits(f[2]) {
		return mapping{}, false, fmt.Errorf("bad file offset %q", clip(f[2]))
	}
	m = mapping{start: start, size: end - start, offset: off, rw: f[1] == "rw-p", private: f[1][3] == 'p'}
	switch {
	case path == "", path == "[heap]", strings.HasPrefix(path, "[stack"), strings.HasPrefix(path, "[anon"):
		m.anon = true
	case strings.HasPrefix(path, "/"):
		m.path = filepath.Clean(path)
	}
	// Anything else ([vdso], [vvar], [vsyscall]) is the kernel's.
	return m, true, nil
}

func hexDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
