package fleet

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/agentfleet/agentfleet/internal/filelock"
)

// CorruptStateError names a state file that cannot be read back.
type CorruptStateError struct {
	Path string
	Err  error
}

func (e *CorruptStateError) Error() string {
	return fmt.Sprintf("state file %s is corrupt (%v); nothing was changed — inspect or move it aside", e.Path, e.Err)
}

// Store reads and writes one fleet's state. Writes are atomic (temp file,
// fsync, rename) and mutations hold an exclusive flock, so two fleet
// commands on one fleet cannot interleave or leave a torn file.
type Store struct {
	Layout Layout
	Fleet  string
}

// Load reads the state; a fleet with no state file is empty.
func (st Store) Load() (*State, error) {
	path := st.Layout.StateFile(st.Fleet)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &State{Version: stateVersion, Fleet: st.Fleet}, nil
	}
	if err != nil {
		return nil, err
	}
	var s State
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, &CorruptStateError{Path: path, Err: err}
	}
	if s.Version != stateVersion || s.Fleet != st.Fleet {
		return nil, &CorruptStateError{Path: path, Err: fmt.Errorf("version %d fleet %q, want version %d fleet %q", s.Version, s.Fleet, stateVersion, st.Fleet)}
	}
	for _, m := range s.Machines {
		if m == nil || m.Name == "" {
			return nil, &CorruptStateError{Path: path, Err: errors.New("machine without a name")}
		}
	}
	return &s, nil
}

// Save writes the state atomically.
func (st Store) Save(s *State) error {
	sort.Slice(s.Machines, func(i, j int) bool { return s.Machines[i].Index < s.Machines[j].Index })
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return WriteFileAtomic(st.Layout.StateFile(st.Fleet), append(b, '\n'), 0o600)
}

// Lock takes the fleet's exclusive lock, waiting until ctx ends. onWait is
// called once if the lock is busy, so the CLI can say why it pauses.
func (st Store) Lock(ctx context.Context, onWait func()) (unlock func(), err error) {
	if err := os.MkdirAll(st.Layout.FleetDir(st.Fleet), 0o700); err != nil {
		return nil, err
	}
	return filelock.Exclusive(ctx, st.Layout.LockFile(st.Fleet), "fleet "+st.Fleet, onWait)
}

// Update runs fn on the current state under the lock and saves the result
// if fn succeeds.
func (st Store) Update(ctx context.Context, fn func(*State) error) error {
	unlock, err := st.Lock(ctx, nil)
	if err != nil {
		return err
	}
	defer unlock()
	s, err := st.Load()
	if err != nil {
		return err
	}
	if err := fn(s); err != nil {
		return err
	}
	return st.Save(s)
}

// WriteFileAtomic writes data to a temp file in path's folder, syncs it and
// renames it over path, so readers see the old or the new file, never part.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
