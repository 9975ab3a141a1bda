package workspace

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
)

// ErrTooMany says a VM's results have more entries than collect takes.
var ErrTooMany = errors.New("more entries than the collect limit")

// Untar unpacks a tar stream the VM sent into dir. Every write goes
// through an os.Root, so no name, "..", absolute path or symlink in the
// stream can place a file outside dir; set-id bits are dropped, device
// and fifo entries skipped. Two caps hold whatever the entries are: the
// stream's own bytes (headers, names and padding count, so a flood of
// empty entries costs what it sends) against maxBytes, and every entry
// (folders, links, empty files, skipped devices, and folders an entry's
// name makes on its way) against maxEntries.
func Untar(r io.Reader, dir string, maxBytes, maxEntries int64) (files int, err error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return 0, err
	}
	defer root.Close()
	cr := &capReader{r: r, left: maxBytes}
	tr := tar.NewReader(cr)
	var entries, written int64 // entries seen, file bytes written
	count := func(n int64) error {
		if entries += n; entries > maxEntries {
			return fmt.Errorf("the VM's results have %w (%d; raise it with --max-entries)", ErrTooMany, maxEntries)
		}
		return nil
	}
	tooLarge := func() error {
		return fmt.Errorf("the VM's results are %w (%d MiB; raise it with --max-size)", ErrTooLarge, maxBytes>>20)
	}
	// parents makes the folders above name that the stream did not make
	// first (an honest tar lists every folder before its contents), each
	// counted as an entry.
	parents := func(name string) error {
		d := path.Dir(name)
		if d == "." {
			return nil
		}
		if fi, err := root.Stat(d); err == nil && fi.IsDir() {
			return nil
		}
		if err := count(int64(strings.Count(d, "/") + 1)); err != nil {
			return err
		}
		return root.MkdirAll(d, 0o755)
	}
	for {
		h, err := tr.Next()
		if cr.over {
			return files, tooLarge()
		}
		if errors.Is(err, io.EOF) {
			return files, nil
		}
		if err != nil {
			return files, fmt.Errorf("read results stream: %w", err)
		}
		if err := count(1); err != nil {
			return files, err
		}
		name := path.Clean(strings.TrimPrefix(h.Name, "./"))
		if name == "." || name == "" {
			continue
		}
		mode := os.FileMode(h.Mode).Perm()
		switch h.Typeflag {
		case tar.TypeDir:
			if err := parents(name); err != nil {
				return files, fmt.Errorf("results: %s: %w", name, err)
			}
			if err := root.Mkdir(name, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
				return files, fmt.Errorf("results: %s: %w", name, err)
			}
		case tar.TypeReg:
			// A sparse entry's holes read as zeros that the stream never
			// carried: what is written counts, not only what arrives.
			if sparse(h) {
				return files, fmt.Errorf("results: %s: a sparse file in the VM's results stream is refused (its holes would be written in full)", name)
			}
			if h.Size > cr.left || h.Size > maxBytes-written {
				return files, tooLarge()
			}
			written += h.Size
			if err := parents(name); err != nil {
				return files, fmt.Errorf("results: %s: %w", name, err)
			}
			f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
			if err != nil {
				return files, fmt.Errorf("results: %s: %w", name, err)
			}
			_, cerr := io.Copy(f, io.LimitReader(tr, h.Size))
			if cr.over {
				f.Close()
				return files, tooLarge()
			}
			if err := errors.Join(cerr, f.Close()); err != nil {
				return files, fmt.Errorf("results: %s: %w", name, err)
			}
			files++
		case tar.TypeSymlink:
			// Kept as a link; the Root refuses any later write through it
			// that would leave dir.
			if err := parents(name); err != nil {
				return files, fmt.Errorf("results: %s: %w", name, err)
			}
			if err := root.Symlink(h.Linkname, name); err != nil {
				return files, fmt.Errorf("results: %s: %w", name, err)
			}
		default:
			// Hard links, devices, fifos: not project content (counted
			// all the same).
		}
	}
}

// capReader fails once more than left bytes are read.
type capReader struct {
	r    io.Reader
	left int64
	over bool
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.left <= 0 {
		c.over = true
		return 0, ErrTooLarge
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	return n, err
}

// sparse reports whether h is a GNU sparse file, in any of its forms.
func sparse(h *tar.Header) bool {
	if h.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}
