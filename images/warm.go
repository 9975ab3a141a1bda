package images

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/qcow2"
	"github.com/agentfleet/agentfleet/internal/vm"
)

// A warm template is one machine of an image version, booted to ready and
// anonymous, saved: its frozen disk (an overlay on the image's disk) and
// its RAM and device state. It lives in the version's folder, under
// warm/<key>/, so it goes with its image and is kept with it: a prune
// never removes a version that a machine's disk links to.

// Files of a template's folder, named in package layout.
const (
	TemplateDisk   = layout.TemplateDisk
	TemplateMemory = layout.TemplateMemory // the guest's RAM; clones map it copy-on-write
	TemplateState  = layout.TemplateState  // device state only
	TemplateMeta   = layout.TemplateMeta
)

// TemplateMetaInfo is template.json, written by the controller.
type TemplateMetaInfo struct {
	Key       string    `json:"key"` // everything that must match to restore it
	CPUs      int       `json:"cpus"`
	MemoryMiB int       `json:"memory_mib"`
	CreatedAt time.Time `json:"created_at"`
	BootSec   float64   `json:"boot_seconds"` // what each clone no longer waits

	// A prebuild's, empty in a warm template (see prebuild.go).
	Kind         string   `json:"kind,omitempty"`          // KindPrebuild, or "" for a warm template
	TemplateKey  string   `json:"template_key,omitempty"`  // the warm template's key it was made from
	Project      string   `json:"project,omitempty"`       // the project folder's base name
	Setup        []string `json:"setup,omitempty"`         // the setup commands that ran, in order
	Inputs       []string `json:"inputs,omitempty"`        // the input files it is keyed by, relative to the project
	InputsDigest string   `json:"inputs_digest,omitempty"` // their paths' and contents' digest (prebuild.Key)
	Commit       string   `json:"commit,omitempty"`        // the git commit the workspace held, "" outside git
	SetupSec     float64  `json:"setup_seconds,omitempty"` // what each spawn from it no longer waits
}

// Template is a stored template.
type Template struct {
	TemplateMetaInfo
	Dir   string `json:"dir"`
	Bytes int64  `json:"bytes"` // disk, memory and state: the blocks they use on disk
}

// Disk, Memory and State are the template's files.
func (t Template) Disk() string   { return filepath.Join(t.Dir, TemplateDisk) }
func (t Template) Memory() string { return filepath.Join(t.Dir, TemplateMemory) }
func (t Template) State() string  { return filepath.Join(t.Dir, TemplateState) }

// VM is t as a driver restores it.
func (t Template) VM() vm.Template {
	return vm.Template{Disk: t.Disk(), Memory: t.Memory(), State: t.State()}
}

// TemplateOfDisk is the template whose frozen disk is disk
// (<version>/warm/<key>/disk.qcow2), if it is one: what a warm clone's
// disk links to.
func TemplateOfDisk(disk string) (Template, bool) {
	dir := filepath.Dir(disk)
	if filepath.Base(disk) != TemplateDisk || filepath.Base(filepath.Dir(dir)) != layout.WarmFolder {
		return Template{}, false
	}
	return Template{Dir: dir}, true
}

// TemplateDir is where the template for key lives in img.
func TemplateDir(img Image, key string) string {
	h := sha256.Sum256([]byte(key))
	return filepath.Join(img.Dir, layout.WarmFolder, hex.EncodeToString(h[:8]))
}

// FindTemplate returns img's template for exactly key. A template whose
// recorded key differs, or whose files do not pass their checks, is never
// returned.
func FindTemplate(img Image, key string) (Template, bool) {
	t, err := loadTemplate(img, TemplateDir(img, key))
	// A prebuild holds a project's files: never an anonymous template.
	if err != nil || t.Key != key || t.Kind != "" {
		return Template{}, false
	}
	return t, true
}

// loadTemplate reads a template of img and checks its files before any
// clone uses them: each a regular file (QEMU maps the memory file into a
// guest's RAM, so a link to a host file would show the guest that file),
// and the disk an overlay on img's disk that names no other file.
func loadTemplate(img Image, dir string) (Template, error) {
	b, err := readRegular(filepath.Join(dir, TemplateMeta), maxManifest)
	if err != nil {
		return Template{}, err
	}
	t := Template{Dir: dir}
	if err := json.Unmarshal(b, &t.TemplateMetaInfo); err != nil {
		return Template{}, err
	}
	for _, f := range []string{TemplateDisk, TemplateMemory, TemplateState} {
		fi, err := os.Lstat(filepath.Join(dir, f))
		if err != nil {
			return Template{}, err
		}
		if !fi.Mode().IsRegular() {
			return Template{}, fmt.Errorf("template file %s is not a regular file", filepath.Join(dir, f))
		}
		t.Bytes += allocated(fi)
	}
	if _, err := qcow2.Check(t.Disk(), qcow2.Expect{Backing: img.Disk}); err != nil {
		// A prebuild's disk may instead be an overlay on the disk of the
		// warm template it was made from, which checks its own.
		w, ok := FindTemplate(img, t.TemplateKey)
		if t.Kind != KindPrebuild || t.TemplateKey == "" || !ok {
			return Template{}, err
		}
		if _, err := qcow2.Check(t.Disk(), qcow2.Expect{Backing: w.Disk()}); err != nil {
			return Template{}, err
		}
	}
	return t, nil
}

// allocated is what a file takes on disk: the guest's RAM file is sparse
// where the guest never touched it.
func allocated(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}

// Templates lists img's warm templates, newest first.
func Templates(img Image) []Template { return listTemplates(img, layout.WarmFolder, "") }

// listTemplates lists the templates of kind in img's folder, newest
// first; a folder being made, or one that does not pass its checks, is
// not listed.
func listTemplates(img Image, folder, kind string) []Template {
	entries, _ := os.ReadDir(filepath.Join(img.Dir, folder))
	var out []Template
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if t, err := loadTemplate(img, filepath.Join(img.Dir, folder, e.Name())); err == nil && t.Kind == kind {
			out = append(out, t)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.After(out[j].CreatedAt) })
	return out
}

// PublishTemplate moves a finished template folder into place for key,
// its files read-only; a template already there for that key wins.
func PublishTemplate(img Image, key, staged string) (Template, error) {
	for _, f := range []string{TemplateDisk, TemplateState, TemplateMeta} {
		if err := os.Chmod(filepath.Join(staged, f), 0o444); err != nil {
			return Template{}, err
		}
	}
	// QEMU 7.2 opens a RAM file read-write even to map it privately, so
	// its owner keeps the write bit; clones never write it (share=off).
	if err := os.Chmod(filepath.Join(staged, TemplateMemory), 0o644); err != nil {
		return Template{}, err
	}
	dst := TemplateDir(img, key)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return Template{}, err
	}
	if err := os.Rename(staged, dst); err != nil {
		if t, ok := FindTemplate(img, key); ok {
			os.RemoveAll(staged)
			return t, nil
		}
		return Template{}, err
	}
	t, ok := FindTemplate(img, key)
	if !ok {
		return Template{}, errors.New("the published template does not load")
	}
	return t, nil
}
