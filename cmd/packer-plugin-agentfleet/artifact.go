package main

import (
	"fmt"
	"sort"
	"strings"

	"github.com/agentfleet/agentfleet/images"
)

// Artifact is a stored, promoted image version. Its files belong to the
// fleet's image store: Destroy leaves them, because `fleet image prune`
// is what removes versions (and it knows which ones machines still use).
type Artifact struct {
	Image   images.Image
	Outputs map[string]string // exports by kind (qcow2, ova, vagrant)
	Skipped bool              // if_changed: this is the existing latest
}

func (a *Artifact) BuilderId() string { return BuilderID }

func (a *Artifact) Id() string { return a.Image.Name + "@" + a.Image.Version }

// Files lists the stored disk first, then the exports in kind order.
func (a *Artifact) Files() []string {
	files := []string{a.Image.Disk}
	for _, k := range a.kinds() {
		files = append(files, a.Outputs[k])
	}
	return files
}

func (a *Artifact) String() string {
	var b strings.Builder
	verb := "stored and promoted"
	if a.Skipped {
		verb = "unchanged, still latest"
	}
	fmt.Fprintf(&b, "agentfleet image %s (%s): %s", a.Id(), verb, a.Image.Disk)
	for _, k := range a.kinds() {
		fmt.Fprintf(&b, "\n  %s: %s", k, a.Outputs[k])
	}
	return b.String()
}

// State answers "image_name", "image_version" and "disk" for
// post-processors.
func (a *Artifact) State(name string) any {
	switch name {
	case "image_name":
		return a.Image.Name
	case "image_version":
		return a.Image.Version
	case "disk":
		return a.Image.Disk
	}
	return nil
}

func (a *Artifact) Destroy() error { return nil }

func (a *Artifact) kinds() []string {
	ks := make([]string, 0, len(a.Outputs))
	for k := range a.Outputs {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
