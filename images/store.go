// Package images knows the image definitions agentfleet can build and keeps
// the local image store: FLEET_HOME/images/<name>/<version>/ holding a
// read-only disk.qcow2 and manifest.json, with a "latest" symlink per name
// that moves atomically when a new version is promoted.
package images

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/qcow2"
	"github.com/agentfleet/agentfleet/internal/vm"
)

// Known lists the image names agentfleet can build.
var Known = []string{"ubuntu-24.04", "debian-12"}

// IsKnown reports whether name is a buildable image.
func IsKnown(name string) bool {
	for _, k := range Known {
		if k == name {
			return true
		}
	}
	return false
}

// A version folder's files, named in package layout.
const (
	DiskFile     = layout.ImageDisk
	ManifestFile = layout.ManifestFile
	latestLink   = layout.LatestLink
)

// latestOf is the name of arch's "latest" link. Each architecture has its
// own, so a nightly arm64 build does not replace the amd64 image spawn
// uses, and amd64 keeps the plain "latest" it always had. Only an
// architecture fleet knows names a link: the name is part of a path.
func latestOf(arch vm.Arch) (string, error) {
	switch a := arch.Or(); {
	case a == vm.AMD64:
		return latestLink, nil
	case slices.Contains(vm.Arches, a):
		return latestLink + "-" + string(a), nil
	}
	return "", fmt.Errorf("architecture %s is none of %s", show(string(arch)), archList())
}

// Manifest records what an image version is made of.
type Manifest struct {
	Name         string            `json:"name"`
	Version      string            `json:"version"`
	Source       string            `json:"source"`        // e.g. "mmdebstrap bookworm from <mirror>"
	SourceDigest string            `json:"source_digest"` // digest of the source (cloud image or package set)
	RecipeHash   string            `json:"recipe_hash"`
	Recipe       string            `json:"recipe"`             // provision recipe name
	Packages     map[string]string `json:"packages,omitempty"` // kernel, docker, node, claude-code versions
	DiskSHA256   string            `json:"disk_sha256"`
	DiskBytes    int64             `json:"disk_bytes"`
	Outputs      map[string]Output `json:"outputs,omitempty"` // exported formats by kind
	// KernelCmdline, with the kernel and initrd outputs, starts the
	// image's kernel directly (see DirectBoot).
	KernelCmdline string `json:"kernel_cmdline,omitempty"`
	// Arch is the guest architecture; "" in manifests from before it was
	// recorded, which were all amd64.
	Arch         vm.Arch   `json:"arch,omitempty"`
	BuiltAt      time.Time `json:"built_at"`
	BuildSeconds float64   `json:"build_seconds"`
}

// Output is one exported file in a version's folder.
type Output struct {
	File   string `json:"file"` // name inside the version folder
	SHA256 string `json:"sha256"`
	Bytes  int64  `json:"bytes"`
}

// Outputs of a version that boot its kernel directly.
const (
	OutputKernel = "kernel"
	OutputInitrd = "initrd"
)

// DirectBoot is how to start the image's kernel without its boot loader,
// or nil if it has none to start so.
func (i Image) DirectBoot() *vm.DirectBoot {
	k, hasK := i.Outputs[OutputKernel]
	r, hasR := i.Outputs[OutputInitrd]
	if !hasK || !hasR || i.KernelCmdline == "" {
		return nil
	}
	return &vm.DirectBoot{Kernel: filepath.Join(i.Dir, k.File), Initrd: filepath.Join(i.Dir, r.File), Cmdline: i.KernelCmdline}
}

// Image is one stored version.
type Image struct {
	Manifest
	Dir    string `json:"dir"`
	Disk   string `json:"disk"`
	Latest bool   `json:"latest"`
}

// Store is the local image store rooted at Root (FLEET_HOME/images).
type Store struct{ Root string }

// Resolve finds "name" (its latest version) or "name@version". A bare
// name is the latest of this host's architecture or, when there is none,
// of the other one.
func (s Store) Resolve(ref string) (Image, error) { return s.ResolveArch(ref, "") }

// ResolveArch is Resolve with a bare name meaning the latest of arch ("":
// as Resolve). A version is what it names, whatever arch says: spawn
// checks that the two agree.
func (s Store) ResolveArch(ref string, arch vm.Arch) (Image, error) {
	name, version, hasVersion := strings.Cut(ref, "@")
	if !IsKnown(name) {
		return Image{}, fmt.Errorf("unknown image %q (known images: %s)", name, strings.Join(Known, ", "))
	}
	if !hasVersion {
		order := []vm.Arch{arch}
		if arch == "" {
			order = []vm.Arch{vm.HostArch()}
			for _, a := range vm.Arches {
				if a != vm.HostArch() {
					order = append(order, a)
				}
			}
		}
		for _, a := range order {
			link, err := latestOf(a)
			if err != nil {
				return Image{}, err
			}
			if target, err := os.Readlink(filepath.Join(s.Root, name, link)); err == nil {
				version = filepath.Base(target)
				break
			}
		}
		if version == "" {
			if arch != "" {
				return Image{}, fmt.Errorf("image %s has no %s build yet; build it with: fleet image build %s --arch %s", name, arch, name, arch)
			}
			return Image{}, fmt.Errorf("image %s is not built yet; build it with: fleet image build %s", name, name)
		}
	}
	img, err := s.use(name, version)
	if err != nil {
		return Image{}, fmt.Errorf("image %s@%s: %w", name, line(version), err)
	}
	return img, nil
}

// use loads a version to be used: its manifest, its disk's header and
// its outputs are checked again, since a store can be written by more
// than fleet.
func (s Store) use(name, version string) (Image, error) {
	img, err := s.load(name, version)
	if err != nil {
		return Image{}, err
	}
	if err := CheckDisk(img.Disk); err != nil {
		return Image{}, err
	}
	if err := checkOutputs(img); err != nil {
		return Image{}, err
	}
	return img, nil
}

// CheckDisk judges a disk the store holds or takes: a qcow2 that names no
// other file. It reads the header only.
func CheckDisk(path string) error {
	_, err := qcow2.Check(path, qcow2.Expect{Format: qcow2.QCOW2})
	return err
}

// load reads a version's manifest and checks it, with the folder it is in.
func (s Store) load(name, version string) (Image, error) {
	if !IsKnown(name) {
		return Image{}, fmt.Errorf("unknown image %s", show(name))
	}
	if err := CheckVersion(version); err != nil {
		return Image{}, err
	}
	dir := filepath.Join(s.Root, name, version)
	if fi, err := os.Lstat(dir); err != nil {
		return Image{}, fmt.Errorf("not in the store: %w", err)
	} else if !fi.IsDir() {
		return Image{}, fmt.Errorf("%s is not a folder", dir)
	}
	b, err := readRegular(filepath.Join(dir, ManifestFile), maxManifest)
	if err != nil {
		return Image{}, err
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return Image{}, fmt.Errorf("corrupt manifest: %w", err)
	}
	if err := m.Check(); err != nil {
		return Image{}, fmt.Errorf("manifest refused: %w", err)
	}
	if m.Name != name || m.Version != version {
		return Image{}, fmt.Errorf("manifest refused: it is for %s@%s, not %s@%s", m.Name, m.Version, name, version)
	}
	m.Arch = m.Arch.Or()
	disk := filepath.Join(dir, DiskFile)
	if fi, err := os.Lstat(disk); err != nil {
		return Image{}, err
	} else if !fi.Mode().IsRegular() {
		return Image{}, fmt.Errorf("%s is not a regular file", disk)
	}
	link, err := latestOf(m.Arch)
	if err != nil {
		return Image{}, err
	}
	latest, _ := os.Readlink(filepath.Join(s.Root, name, link))
	return Image{Manifest: m, Dir: dir, Disk: disk, Latest: filepath.Base(latest) == version}, nil
}

// Skipped is a stored version that List leaves out, and why.
type Skipped struct {
	Name    string
	Version string // its folder's name, as found: clean it to show it
	Dir     string
	Err     error
}

// List returns every stored version, newest first within each name.
func (s Store) List() ([]Image, error) {
	out, _, err := s.Scan()
	return out, err
}

// Scan is List with the versions it left out: a manifest or a disk that
// does not pass its checks is never listed, pruned or used.
func (s Store) Scan() ([]Image, []Skipped, error) {
	var out []Image
	var skipped []Skipped
	for _, name := range Known {
		entries, err := os.ReadDir(filepath.Join(s.Root, name))
		if errors.Is(err, os.ErrNotExist) {
			continue
		} else if err != nil {
			return nil, nil, err
		}
		for _, e := range entries {
			if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
				continue
			}
			img, err := s.use(name, e.Name())
			if err != nil {
				skipped = append(skipped, Skipped{Name: name, Version: e.Name(), Dir: filepath.Join(s.Root, name, e.Name()), Err: err})
				continue
			}
			out = append(out, img)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].Version > out[j].Version
	})
	return out, skipped, nil
}

// Add moves a finished disk (and any exported files, named in
// m.Outputs and found at extras[kind]) into the store as name/version,
// makes them read-only (clones link to the disk) and writes the manifest.
// It does not promote: the caller promotes a verified version. The
// manifest and the disk's header are checked first: nothing that fails
// them enters the store.
func (s Store) Add(m Manifest, disk string, extras ...map[string]string) (Image, error) {
	if err := m.Check(); err != nil {
		return Image{}, fmt.Errorf("store %s: manifest refused: %w", show(m.Name+"@"+m.Version), err)
	}
	if err := CheckDisk(disk); err != nil {
		return Image{}, fmt.Errorf("store %s@%s: %w", m.Name, m.Version, err)
	}
	dir := filepath.Join(s.Root, m.Name, m.Version)
	if _, err := os.Stat(dir); err == nil {
		return Image{}, fmt.Errorf("image %s@%s already exists", m.Name, m.Version)
	}
	staging := filepath.Join(s.Root, m.Name, layout.StagingPrefix+m.Version)
	if err := os.MkdirAll(staging, 0o755); err != nil {
		return Image{}, err
	}
	defer os.RemoveAll(staging)
	dst := filepath.Join(staging, DiskFile)
	if err := os.Rename(disk, dst); err != nil {
		return Image{}, fmt.Errorf("move disk into store: %w", err)
	}
	if err := os.Chmod(dst, 0o444); err != nil {
		return Image{}, err
	}
	for _, ex := range extras {
		for kind, src := range ex {
			out, ok := m.Outputs[kind]
			if !ok || out.File == "" || out.File != filepath.Base(out.File) {
				return Image{}, fmt.Errorf("output %s has no file name in the manifest", kind)
			}
			if err := os.Rename(src, filepath.Join(staging, out.File)); err != nil {
				return Image{}, fmt.Errorf("move %s into store: %w", kind, err)
			}
			_ = os.Chmod(filepath.Join(staging, out.File), 0o444)
		}
	}
	b, _ := json.MarshalIndent(m, "", "  ")
	if err := os.WriteFile(filepath.Join(staging, ManifestFile), append(b, '\n'), 0o444); err != nil {
		return Image{}, err
	}
	if err := os.Rename(staging, dir); err != nil {
		return Image{}, err
	}
	return s.load(m.Name, m.Version)
}

// Promote points name's "latest" of the version's architecture at it
// atomically (a new symlink renamed over the old one), so a reader sees
// the old or the new version.
func (s Store) Promote(name, version string) error {
	img, err := s.use(name, version)
	if err != nil {
		return fmt.Errorf("promote %s@%s: %w", line(name), line(version), err)
	}
	latest, err := latestOf(img.Arch)
	if err != nil {
		return fmt.Errorf("promote %s@%s: %w", img.Name, img.Version, err)
	}
	link := filepath.Join(s.Root, img.Name, latest)
	tmp := link + ".tmp"
	_ = os.Remove(tmp)
	if err := os.Symlink(version, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, link)
}

// NewVersion returns a sortable version string for a build started at t.
func NewVersion(t time.Time) string { return t.UTC().Format("20060102-150405") }

// Prune removes all but the newest keep versions of each image and
// architecture. It never
// removes the latest version, nor a version with a file in inUse (the base
// disk or OVA of a machine made from it): deleting it would break that
// machine's clone.
func (s Store) Prune(keep int, inUse map[string]bool) (removed []Image, err error) {
	if keep < 1 {
		return nil, fmt.Errorf("--keep must be at least 1, got %d", keep)
	}
	all, err := s.List()
	if err != nil {
		return nil, err
	}
	seen := map[string]int{}  // per name and architecture
	for _, img := range all { // newest first within each name
		k := img.Name + "/" + string(img.Arch.Or())
		seen[k]++
		if seen[k] <= keep || img.Latest || usesDir(inUse, img.Dir) {
			continue
		}
		// Rename first, so a half-removed version never looks loadable.
		trash := filepath.Join(s.Root, img.Name, layout.PrunePrefix+img.Version)
		if err := os.Rename(img.Dir, trash); err != nil {
			return removed, fmt.Errorf("prune %s@%s: %w", img.Name, img.Version, err)
		}
		if err := os.RemoveAll(trash); err != nil {
			return removed, fmt.Errorf("prune %s@%s: %w", img.Name, img.Version, err)
		}
		removed = append(removed, img)
	}
	return removed, nil
}

// usesDir reports whether any path in inUse lies in dir (its warm
// templates included).
func usesDir(inUse map[string]bool, dir string) bool {
	dir = filepath.Clean(dir) + string(filepath.Separator)
	for p := range inUse {
		if strings.HasPrefix(filepath.Clean(p), dir) {
			return true
		}
	}
	return false
}
