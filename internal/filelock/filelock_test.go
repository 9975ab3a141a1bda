package filelock

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A second exclusive lock waits for the first, says it waits, and gives
// up when its context ends; shared locks share.
func TestExclusiveWaitsAndSharedShares(t *testing.T) {
	p := filepath.Join(t.TempDir(), "lock")
	unlock, err := Exclusive(context.Background(), p, "the test lock", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	waited := false
	if _, err := Exclusive(ctx, p, "the test lock", func() { waited = true }); err == nil || !strings.Contains(err.Error(), "waiting for the lock on the test lock") || !waited {
		t.Fatalf("a second exclusive lock: %v (waited %v)", err, waited)
	}
	got := make(chan error, 1)
	go func() {
		u, err := Exclusive(context.Background(), p, "the test lock", nil)
		if err == nil {
			u()
		}
		got <- err
	}()
	time.Sleep(150 * time.Millisecond)
	unlock()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting lock was not granted after the unlock")
	}
	u1, err := Shared(context.Background(), p, "s", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer u1()
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Second)
	defer cancel2()
	u2, err := Shared(ctx2, p, "s", nil)
	if err != nil {
		t.Fatalf("two shared locks: %v", err)
	}
	u2()
}
