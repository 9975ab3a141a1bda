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

// Untar unpacks a tar stream the VM sent into dir. Every write goes
// through an os.Root, so no name, "..", absolute path or symlink in the
// stream can place a file outside dir; set-id bits are dropped, device
// and fifo entries skipped, and more than maxBytes of content refused.
func Untar(r io.Reader, dir string, maxBytes int64) (files int, err error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return 0, err
	}
	defer root.Close()
	tr := tar.NewReader(r)
	var total int64
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files, nil
		}
		if err != nil {
			return files, fmt.Errorf("read results stream: %w", err)
		}
		name := path.Clean(strings.TrimPrefix(h.Name, "./"))
		if name == "." || name == "" {
			continue
		}
		mode := os.FileMode(h.Mode).Perm()
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o755); err != nil {
				return files, fmt.Errorf("results: %s: %w", name, err)
			}
		case tar.TypeReg:
			if total += h.Size; total > maxBytes {
				return files, fmt.Errorf("%w (%d MiB; raise it with --max-size)", ErrTooLarge, maxBytes>>20)
			}
			if d := path.Dir(name); d != "." {
				if err := root.MkdirAll(d, 0o755); err != nil {
					return files, fmt.Errorf("results: %s: %w", name, err)
				}
			}
			f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
			if err != nil {
				return files, fmt.Errorf("results: %s: %w", name, err)
			}
			_, cerr := io.Copy(f, io.LimitReader(tr, h.Size))
			if err := errors.Join(cerr, f.Close()); err != nil {
				return files, fmt.Errorf("results: %s: %w", name, err)
			}
			files++
		case tar.TypeSymlink:
			// Kept as a link; the Root refuses any later write through it
			// that would leave dir.
			if err := root.Symlink(h.Linkname, name); err != nil {
				return files, fmt.Errorf("results: %s: %w", name, err)
			}
		default:
			// Hard links, devices, fifos: not project content.
		}
	}
}
