package fleet

import (
	"errors"
	"fmt"
	"os"
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
			inUse[m.BaseImage] = true
		}
	}
	return inUse, nil
}
