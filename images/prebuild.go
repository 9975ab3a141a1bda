package images

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/agentfleet/agentfleet/internal/layout"
)

// A prebuild is a template made after a project came into a machine and
// its setup ran: the same files as a warm template (disk, memory, state,
// template.json with Kind KindPrebuild), in the version's prebuilds/<key>/
// folder, so it goes with its image version. Its key is
// prebuild.Key's (template key, setup commands, inputs' content). It
// holds the project's files, so its folder and files are its owner's
// only. Its disk is an overlay on the version's disk, or on the disk of
// the warm template it was made from (TemplateKey).

// KindPrebuild is a prebuild's TemplateMetaInfo.Kind.
const KindPrebuild = "prebuild"

// PrebuildDir is where the prebuild for key lives in img.
func PrebuildDir(img Image, key string) string {
	h := sha256.Sum256([]byte(key))
	return filepath.Join(img.Dir, layout.PrebuildFolder, hex.EncodeToString(h[:8]))
}

// FindPrebuild returns img's prebuild for exactly key. One whose recorded
// key or kind differs, or whose files do not pass a template's checks, is
// never returned.
func FindPrebuild(img Image, key string) (Template, bool) {
	t, err := loadTemplate(img, PrebuildDir(img, key))
	if err != nil || t.Key != key || t.Kind != KindPrebuild {
		return Template{}, false
	}
	return t, true
}

// Prebuilds lists img's prebuilds, newest first.
func Prebuilds(img Image) []Template { return listTemplates(img, layout.PrebuildFolder, KindPrebuild) }

// PublishPrebuild moves a finished prebuild folder (its template.json of
// Kind KindPrebuild and key) into place for key: the folder 0700, its
// disk, state and template.json 0400, its memory 0600 (QEMU opens a RAM
// file read-write even to map it privately; clones never write it). A
// prebuild already there for that key wins.
func PublishPrebuild(img Image, key, staged string) (Template, error) {
	if err := os.Chmod(staged, 0o700); err != nil {
		return Template{}, err
	}
	for _, f := range []string{TemplateDisk, TemplateState, TemplateMeta} {
		if err := os.Chmod(filepath.Join(staged, f), 0o400); err != nil {
			return Template{}, err
		}
	}
	if err := os.Chmod(filepath.Join(staged, TemplateMemory), 0o600); err != nil {
		return Template{}, err
	}
	dst := PrebuildDir(img, key)
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return Template{}, err
	}
	if err := os.Rename(staged, dst); err != nil {
		if t, ok := FindPrebuild(img, key); ok {
			os.RemoveAll(staged)
			return t, nil
		}
		return Template{}, err
	}
	t, ok := FindPrebuild(img, key)
	if !ok {
		// Not left where a later find could half-trust it.
		removeTemplateDir(dst)
		return Template{}, errors.New("the published prebuild does not load (is its template.json of kind prebuild, with this key?)")
	}
	return t, nil
}

// RemovePrebuild removes a prebuild's folder. The caller makes sure no
// machine links to it (Machine.BaseImage is its disk); t must be one of
// an image's prebuilds, as FindPrebuild or Prebuilds return them.
func RemovePrebuild(t Template) error {
	fi, err := os.Lstat(t.Dir)
	if err != nil {
		return fmt.Errorf("remove prebuild: %w", err)
	}
	if t.Kind != KindPrebuild || !fi.IsDir() || filepath.Base(filepath.Dir(t.Dir)) != layout.PrebuildFolder {
		return fmt.Errorf("%s is not a prebuild's folder", t.Dir)
	}
	return removeTemplateDir(t.Dir)
}

// removeTemplateDir renames dir out of the way first, so a half-removed
// template never loads, then removes it.
func removeTemplateDir(dir string) error {
	trash := filepath.Join(filepath.Dir(dir), layout.TemplateStagingPrefix+"rm-"+filepath.Base(dir))
	if err := os.Rename(dir, trash); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	if err := os.RemoveAll(trash); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}

// PrunedPrebuild is a prebuild a prune removed, with its image version.
type PrunedPrebuild struct {
	Image string `json:"image"` // name@version
	Arch  string `json:"arch"`
	Template
}

// PrunePrebuilds removes every stored prebuild that no machine links to
// (inUse holds machines' base disks, as for Prune), in every version.
// It stops at the first that cannot be removed, returning what it did.
func (s Store) PrunePrebuilds(inUse map[string]bool) (removed []PrunedPrebuild, err error) {
	all, err := s.List()
	if err != nil {
		return nil, err
	}
	for _, img := range all {
		_, unused := PrebuildsInUse(img, inUse)
		for _, t := range unused {
			if err := RemovePrebuild(t); err != nil {
				return removed, fmt.Errorf("prune prebuild of %s@%s: %w", img.Name, img.Version, err)
			}
			removed = append(removed, PrunedPrebuild{Image: img.Name + "@" + img.Version, Arch: string(img.Arch.Or()), Template: t})
		}
	}
	return removed, nil
}

// PrebuildsInUse are img's prebuilds that a machine links to: inUse holds
// machines' base disks (Machine.BaseImage), as for Store.Prune.
func PrebuildsInUse(img Image, inUse map[string]bool) (used, unused []Template) {
	for _, t := range Prebuilds(img) {
		if usesDir(inUse, t.Dir) {
			used = append(used, t)
		} else {
			unused = append(unused, t)
		}
	}
	return used, unused
}
