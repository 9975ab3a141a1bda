// Package provision holds what goes into an image: numbered shell scripts,
// embedded in the binary, run in order in the image's root file system.
package provision

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"sort"
)

//go:embed rootfs/*.sh
var files embed.FS

// Script is one provisioning script.
type Script struct {
	Name string // e.g. "10-boot.sh"
	Body []byte
}

// RootfsScripts returns the scripts for a root file system, in run order.
func RootfsScripts() []Script {
	entries, _ := fs.ReadDir(files, "rootfs")
	out := make([]Script, 0, len(entries))
	for _, e := range entries {
		b, _ := files.ReadFile("rootfs/" + e.Name())
		out = append(out, Script{Name: e.Name(), Body: b})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Hash digests scripts' names and bodies, for the recipe hash.
func Hash(scripts []Script) string {
	h := sha256.New()
	for _, s := range scripts {
		h.Write([]byte(s.Name))
		h.Write([]byte{0})
		h.Write(s.Body)
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}
