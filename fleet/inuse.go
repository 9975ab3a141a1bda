package fleet

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/agentfleet/agentfleet/internal/layout"
)

// BaseImagesInUse returns the base disks that machines of any fleet under
// this layout link to. Image pruning must keep them. A state file that
// cannot be read is an error, not an empty answer: guessing would let a
// prune break a machine's clone.
func BaseImagesInUse(l Layout) (map[string]bool, error) {
	inUse := map[string]bool{}
	entries, err := os.ReadDir(l.FleetsDir())
	if errors.Is(err, os.ErrNotExist) {
		return inUse, nil
	} else if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		st, err := Store{Layout: l, Fleet: e.Name()}.Load()
		if err != nil {
			return nil, fmt.Errorf("fleet %s: %w", e.Name(), err)
		}
		for _, m := range st.Machines {
			for _, d := range diskChain(m.BaseImage) {
				inUse[d] = true
			}
		}
	}
	return inUse, nil
}

// diskChain is base and, for a fork's capture, every disk under it: the
// captured disk links to its source's, which may be another capture's.
func diskChain(base string) []string {
	chain := []string{base}
	for i := 0; i < 64; i++ {
		b, err := os.ReadFile(filepath.Join(filepath.Dir(base), layout.ForkBackingFile))
		if err != nil || filepath.Base(filepath.Dir(filepath.Dir(base))) != layout.ForksFolder {
			break
		}
		base = strings.TrimSpace(string(b))
		chain = append(chain, base)
	}
	return chain
}
