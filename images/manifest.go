package images

import (
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"os"
	"regexp"
	"slices"
	"strings"
	"syscall"

	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/termsafe"
	"github.com/agentfleet/agentfleet/internal/vm"
)

// A manifest may come from a registry: each of its fields that becomes a
// path, a link, a name or text on a terminal is checked on pull and on
// every load, so that a manifest is data and never says where fleet
// writes or what a terminal does.

var (
	// versionPattern is a version folder's name: never "." or "..", no
	// slash, and not a "latest" link's name.
	versionPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	// namePattern is a recipe, an output kind or a package's name.
	namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$`)
	// tokenPattern is a hash or a digest as the builder writes them.
	tokenPattern = regexp.MustCompile(`^[A-Za-z0-9._:+-]{0,200}$`)
)

// maxManifest is the largest manifest.json fleet reads.
const maxManifest = 1 << 20

// CheckVersion says why version cannot name a version folder, or nil.
func CheckVersion(version string) error {
	if !versionPattern.MatchString(version) || strings.HasPrefix(version, latestLink) {
		return fmt.Errorf("version %s is not a version fleet takes (letters, digits, . _ -; not latest)", show(version))
	}
	return nil
}

// Check says what in m fleet does not take, on one line, or nil.
func (m Manifest) Check() error {
	if !IsKnown(m.Name) {
		return fmt.Errorf("image name %s is none of %s", show(m.Name), strings.Join(Known, ", "))
	}
	if err := CheckVersion(m.Version); err != nil {
		return err
	}
	if m.Arch != "" && !slices.Contains(vm.Arches, m.Arch) {
		return fmt.Errorf("architecture %s is none of %s", show(string(m.Arch)), archList())
	}
	if m.Recipe != "" && !namePattern.MatchString(m.Recipe) {
		return fmt.Errorf("recipe %s is not a recipe name", show(m.Recipe))
	}
	for field, v := range map[string]string{"recipe_hash": m.RecipeHash, "source_digest": m.SourceDigest} {
		if !tokenPattern.MatchString(v) {
			return fmt.Errorf("%s %s is not a digest", field, show(v))
		}
	}
	if err := plain("source", m.Source, 2048); err != nil {
		return err
	}
	if err := plain("kernel_cmdline", m.KernelCmdline, 4096); err != nil {
		return err
	}
	if err := checkSum("disk_sha256", m.DiskSHA256); err != nil {
		return err
	}
	if m.DiskBytes < 0 {
		return fmt.Errorf("disk_bytes %d is negative", m.DiskBytes)
	}
	if m.BuildSeconds < 0 || math.IsNaN(m.BuildSeconds) || math.IsInf(m.BuildSeconds, 0) {
		return fmt.Errorf("build_seconds %v is not a duration", m.BuildSeconds)
	}
	if len(m.Packages) > 64 {
		return fmt.Errorf("it lists %d packages, more than 64", len(m.Packages))
	}
	for k, v := range m.Packages {
		if !namePattern.MatchString(k) {
			return fmt.Errorf("package name %s is not a package name", show(k))
		}
		if err := plain("version of "+k, v, 256); err != nil {
			return err
		}
	}
	if len(m.Outputs) > 16 {
		return fmt.Errorf("it lists %d outputs, more than 16", len(m.Outputs))
	}
	files := map[string]bool{}
	for kind, o := range m.Outputs {
		if !namePattern.MatchString(kind) {
			return fmt.Errorf("output kind %s is not a name", show(kind))
		}
		// Each kind has its own check before it is stored or used.
		if !slices.Contains(OutputKinds, kind) {
			return fmt.Errorf("output kind %s is none of %s", show(kind), strings.Join(OutputKinds, ", "))
		}
		// A file of the version folder, and none that fleet keeps there.
		if !safeFile.MatchString(o.File) || o.File == ManifestFile || o.File == DiskFile || o.File == layout.WarmFolder || files[o.File] {
			return fmt.Errorf("output %s has the file name %s, which may not be in a version folder", kind, show(o.File))
		}
		files[o.File] = true
		if err := checkSum("sha256 of output "+kind, o.SHA256); err != nil {
			return err
		}
		if o.Bytes < 0 {
			return fmt.Errorf("output %s has a negative size %d", kind, o.Bytes)
		}
	}
	return nil
}

// checkSum: a SHA-256 is 64 lowercase hex digits (empty in manifests of
// images that were never pushed).
func checkSum(field, s string) error {
	if s == "" {
		return nil
	}
	if _, err := hex.DecodeString(s); err != nil || len(s) != 64 || strings.ToLower(s) != s {
		return fmt.Errorf("%s %s is not a SHA-256 in hex", field, show(s))
	}
	return nil
}

// plain: printed text is one line, no control bytes, at most max bytes.
func plain(field, s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("%s is %d bytes, more than %d", field, len(s), max)
	}
	if termsafe.Line(s) != s {
		return fmt.Errorf("%s %s has control characters", field, show(s))
	}
	return nil
}

func archList() string {
	var s []string
	for _, a := range vm.Arches {
		s = append(s, string(a))
	}
	return strings.Join(s, ", ")
}

// show quotes a manifest's string for an error: one clean line, short.
func show(s string) string { return `"` + line(s) + `"` }

// line is s cut short and cleaned for one line of a terminal.
func line(s string) string {
	if len(s) > 80 {
		s = s[:80] + "..."
	}
	return termsafe.Line(s)
}

// readRegular reads a file of the store that must be a regular file of
// at most max bytes: never a link to elsewhere, a FIFO or a device.
func readRegular(path string, max int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("%s is a symbolic link", path)
		}
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return nil, err
	} else if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	return readAllLimited(f, max)
}
