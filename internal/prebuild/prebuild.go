// Package prebuild keys a project's prebuild: what a warm template made
// after the project's setup ran depends on. It reads the project's
// working tree and nothing else, and imports nothing of fleet's.
//
// A prebuild is keyed by the image's template key, the setup commands in
// order, and the path and content of each input file. Inputs are the
// files fleet.hcl's prebuild_inputs names, or by default the lockfiles
// found in the project (Lockfiles, at the top level and one folder down).
//
// A pattern is a slash-separated path relative to the project, each
// element matched as Go's path.Match does (* ? [a-z] and \ escapes; a *
// never crosses a /). "**" is not supported: write "*/go.sum" for one
// folder down. A pattern without wildcards names one file, which must be
// there; a pattern with wildcards must match at least one file. The
// default lockfiles are taken where found and skipped where not.
//
// Inputs never leave the project: an absolute path, a ".." element or a
// symbolic link out of the project is refused, not followed. Only
// regular files are read (a FIFO or device is refused before it is
// opened, and opened non-blocking in case it was swapped in), each at
// most MaxInputBytes.
package prebuild

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"syscall"
)

// MaxInputBytes bounds one input file: a lockfile is megabytes, and the
// key is computed before every spawn.
const MaxInputBytes = 64 << 20

// Lockfiles are the default inputs: package managers' lockfiles, looked
// for at the project's top level and in each folder one level down
// (folders whose name starts with "." are not looked in).
var Lockfiles = []string{
	"package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml", "bun.lockb", "bun.lock", // JavaScript
	"requirements*.txt", "poetry.lock", "Pipfile.lock", "uv.lock", "pdm.lock", // Python
	"Cargo.lock", "go.sum", "Gemfile.lock", "composer.lock", "mix.lock", "pubspec.lock",
	"Package.resolved", "gradle.lockfile", "packages.lock.json", "flake.lock",
}

// CheckPattern says why p cannot be a prebuild input pattern, or nil.
func CheckPattern(p string) error {
	switch {
	case p == "":
		return errors.New("an input pattern is empty")
	case strings.ContainsRune(p, 0):
		return fmt.Errorf("input %q has a NUL byte", p)
	case strings.HasPrefix(p, "/"):
		return fmt.Errorf("input %q is absolute: inputs are paths inside the project", p)
	}
	for _, el := range strings.Split(p, "/") {
		switch {
		case el == "..":
			return fmt.Errorf("input %q has a .. element: inputs are paths inside the project", p)
		case el == "**":
			return fmt.Errorf("input %q: ** is not supported; write */NAME for one folder down", p)
		case el == "" || el == ".":
			return fmt.Errorf("input %q is not a clean path (empty or . element)", p)
		}
		if _, err := path.Match(el, ""); err != nil {
			return fmt.Errorf("input %q: bad pattern %q", p, el)
		}
	}
	return nil
}

// Inputs resolves configured patterns (nil: the default lockfiles) to the
// files they name in projectDir: sorted slash paths relative to it, each
// once. A named file that is missing, or a wildcard pattern that matches
// no file, is an error naming it; a default lockfile that is missing or
// not a regular file is skipped. A symbolic link out of the project is an
// error either way.
func Inputs(projectDir string, configured []string) ([]string, error) {
	root, err := os.OpenRoot(projectDir)
	if err != nil {
		return nil, fmt.Errorf("prebuild inputs: %w", err)
	}
	defer root.Close()
	var out []string
	if configured == nil {
		for _, lf := range Lockfiles {
			for _, p := range []string{lf, "*/" + lf} {
				got, err := resolve(root, p, true)
				if err != nil {
					return nil, err
				}
				out = append(out, got...)
			}
		}
	} else {
		for _, p := range configured {
			if err := CheckPattern(p); err != nil {
				return nil, err
			}
			got, err := resolve(root, p, false)
			if err != nil {
				return nil, err
			}
			if len(got) == 0 {
				return nil, fmt.Errorf("prebuild input %q matches no file in %s", p, projectDir)
			}
			out = append(out, got...)
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// resolve matches pattern p element by element under root. Defaults skip
// what is not a regular file; named inputs do not.
func resolve(root *os.Root, p string, isDefault bool) ([]string, error) {
	wild := hasMeta(p)
	cands := []string{""}
	els := strings.Split(p, "/")
	for i, el := range els {
		last := i == len(els)-1
		var next []string
		for _, dir := range cands {
			if !hasMeta(el) {
				next = append(next, join(dir, el))
				continue
			}
			names, err := readDirNames(root, dir)
			if err != nil {
				continue // not a folder, or gone: nothing matches in it
			}
			for _, n := range names {
				if ok, _ := path.Match(el, n); !ok {
					continue
				}
				if !last && isDefault && strings.HasPrefix(n, ".") {
					continue // .git, .venv: not the project's own folders
				}
				if !last {
					if fi, err := root.Stat(join(dir, n)); err != nil || !fi.IsDir() {
						continue // a file, or a link out: nothing to look in
					}
				}
				next = append(next, join(dir, n))
			}
		}
		cands = next
	}
	var out []string
	for _, rel := range cands {
		fi, err := root.Stat(rel)
		switch {
		case errors.Is(err, fs.ErrNotExist) && (isDefault || wild):
			continue
		case errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("prebuild input %q: no such file in the project", rel)
		case err != nil:
			// os.Root refuses a link out of the project here.
			return nil, fmt.Errorf("prebuild input %q: %w (inputs stay inside the project)", rel, err)
		case fi.Mode().IsRegular():
			out = append(out, rel)
		case isDefault || (wild && fi.IsDir()):
			continue // a folder named like a lockfile, a FIFO: not a lockfile
		default:
			return nil, fmt.Errorf("prebuild input %q is not a regular file (%s)", rel, fi.Mode().Type())
		}
	}
	return out, nil
}

func readDirNames(root *os.Root, dir string) ([]string, error) {
	if dir == "" {
		dir = "."
	}
	f, err := root.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	slices.Sort(names) // the first bad match reported is always the same
	return names, err
}

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

func hasMeta(p string) bool { return strings.ContainsAny(p, `*?[\`) }

// Key is the prebuild key: a SHA-256 over templateKey, each setup command
// and each input's path and content hash, every field length-prefixed so
// no two different lists give the same bytes (["a b"] is not ["a","b"]).
// inputsDigest is the same over the inputs alone, recorded in a prebuild
// so a listing can say which inputs it was made from. inputs are paths
// relative to projectDir (as Inputs returns them), read from the working
// tree now; one that is missing, unreadable, not a regular file, outside
// the project or larger than MaxInputBytes is an error naming it.
func Key(templateKey string, setup []string, projectDir string, inputs []string) (key string, inputsDigest string, err error) {
	root, err := os.OpenRoot(projectDir)
	if err != nil {
		return "", "", fmt.Errorf("prebuild key: %w", err)
	}
	defer root.Close()
	sorted := slices.Clone(inputs)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)

	in := sha256.New()
	field(in, "fleet-prebuild-inputs-v1")
	count(in, len(sorted))
	for _, rel := range sorted {
		sum, err := hashInput(root, rel)
		if err != nil {
			return "", "", err
		}
		field(in, rel)
		field(in, sum)
	}
	inputsDigest = hex.EncodeToString(in.Sum(nil))

	k := sha256.New()
	field(k, "fleet-prebuild-v1")
	field(k, templateKey)
	count(k, len(setup))
	for _, s := range setup {
		field(k, s)
	}
	field(k, inputsDigest)
	return hex.EncodeToString(k.Sum(nil)), inputsDigest, nil
}

func field(h hash.Hash, s string) {
	count(h, len(s))
	io.WriteString(h, s)
}

func count(h hash.Hash, n int) {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(n))
	h.Write(b[:])
}

// hashInput is the hex SHA-256 of one input, read through root so no
// link or ".." takes it out of the project.
func hashInput(root *os.Root, rel string) (string, error) {
	if err := CheckPattern(rel); err != nil {
		return "", err
	}
	fail := func(err error) (string, error) {
		return "", fmt.Errorf("prebuild input %q: %w", rel, err)
	}
	fi, err := root.Stat(rel)
	if err != nil {
		return fail(err)
	}
	if !fi.Mode().IsRegular() {
		return fail(fmt.Errorf("not a regular file (%s)", fi.Mode().Type()))
	}
	// Non-blocking: a FIFO swapped in after the check cannot hang us.
	f, err := root.OpenFile(rel, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return fail(err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return fail(err)
	} else if !fi.Mode().IsRegular() {
		return fail(fmt.Errorf("not a regular file (%s)", fi.Mode().Type()))
	}
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, MaxInputBytes+1))
	if err != nil {
		return fail(err)
	}
	if n > MaxInputBytes {
		return fail(fmt.Errorf("larger than %d MiB", MaxInputBytes>>20))
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
