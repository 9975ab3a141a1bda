// Package filelock takes flock(2) locks on files, waiting as long as a
// context allows: the one way fleet's processes (the controller's
// commands, a node's jobs) take turns on a file.
package filelock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// pollEvery is how often a waiting lock is tried again.
const pollEvery = 100 * time.Millisecond

// Exclusive takes an exclusive lock on path (created if missing), waiting
// until ctx ends; onWait (if set) is called once if it has to wait. what
// names the lock in errors.
func Exclusive(ctx context.Context, path, what string, onWait func()) (unlock func(), err error) {
	return take(ctx, path, what, syscall.LOCK_EX, onWait)
}

// Shared takes a shared lock on path, as Exclusive does.
func Shared(ctx context.Context, path, what string, onWait func()) (unlock func(), err error) {
	return take(ctx, path, what, syscall.LOCK_SH, onWait)
}

func take(ctx context.Context, path, what string, how int, onWait func()) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	waited := false
	for {
		err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		if err == nil {
			return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", what, err)
		}
		if !waited && onWait != nil {
			onWait()
			waited = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for the lock on %s: %w", what, ctx.Err())
		case <-time.After(pollEvery):
		}
	}
}
