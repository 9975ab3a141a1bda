// Package procmem reads a process's memory from /proc/PID/smaps: what it
// holds alone and what it shares, and what of that is one file's mapping.
package procmem

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// Usage is a process's memory, in bytes.
type Usage struct {
	Private int64 // Private_Clean + Private_Dirty: held by this process alone
	Shared  int64 // Shared_Clean + Shared_Dirty: mapped by others too
	// FileShared and FilePrivate are the same, for the mappings of the
	// file asked about.
	FileShared, FilePrivate int64
}

// maxSmaps bounds what is read of one smaps file.
const maxSmaps = 64 << 20

// Read reads pid's smaps under procRoot ("/proc"); file, if set, is the
// path whose mappings are counted apart (a " (deleted)" suffix matches).
func Read(procRoot string, pid int, file string) (Usage, error) {
	f, err := os.Open(fmt.Sprintf("%s/%d/smaps", procRoot, pid))
	if err != nil {
		return Usage{}, err
	}
	defer f.Close()
	return Parse(io.LimitReader(f, maxSmaps), file)
}

// Parse reads smaps text. A mapping's header is "start-end perms offset
// dev inode [path]"; its fields are "Name: N kB".
func Parse(r io.Reader, file string) (Usage, error) {
	var u Usage
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	inFile := false
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if !strings.HasSuffix(f[0], ":") {
			// A mapping header: the path is everything after the inode.
			inFile = false
			if len(f) >= 6 && file != "" {
				path := strings.Join(f[5:], " ")
				path = strings.TrimSuffix(path, " (deleted)")
				inFile = path == file
			}
			continue
		}
		if len(f) < 2 {
			continue
		}
		var shared bool
		switch f[0] {
		case "Private_Clean:", "Private_Dirty:":
		case "Shared_Clean:", "Shared_Dirty:":
			shared = true
		default:
			continue
		}
		kb, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil || kb < 0 || kb > 1<<40 {
			return Usage{}, fmt.Errorf("smaps: bad value in %.80q", line)
		}
		b := kb << 10
		switch {
		case shared && inFile:
			u.Shared += b
			u.FileShared += b
		case shared:
			u.Shared += b
		case inFile:
			u.Private += b
			u.FilePrivate += b
		default:
			u.Private += b
		}
	}
	if err := sc.Err(); err != nil {
		return Usage{}, fmt.Errorf("smaps: %w", err)
	}
	return u, nil
}
