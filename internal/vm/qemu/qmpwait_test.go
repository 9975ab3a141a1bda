package qemu

import (
	"bufio"
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeMonitor serves QMP on dir's socket. The first `stalls` connections
// get the greeting and then no answer (QEMU's monitor while the migration
// holds its big lock); later ones answer query-migrate with status.
func fakeMonitor(t *testing.T, dir string, stalls int32, status string) *atomic.Int32 {
	t.Helper()
	l, err := net.Listen("unix", qmpPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var conns atomic.Int32
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			n := conns.Add(1)
			go func() {
				defer c.Close()
				c.Write([]byte(`{"QMP": {"version": {}, "capabilities": []}}` + "\n"))
				if n <= stalls {
					time.Sleep(2 * time.Second)
					return
				}
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if strings.Contains(line, "query-migrate") {
						c.Write([]byte(`{"return": {"status": "` + status + `"}}` + "\n"))
					} else {
						c.Write([]byte(`{"return": {}}` + "\n"))
					}
				}
			}()
		}
	}()
	return &conns
}

func shortQMPTimeout(t *testing.T) {
	old := qmpReplyTimeout
	qmpReplyTimeout = 150 * time.Millisecond
	t.Cleanup(func() { qmpReplyTimeout = old })
}

// A monitor that answers late while the state is sent is waited for; the
// migration's end is still seen.
func TestWaitMigrationOutlastsAMonitorThatAnswersLate(t *testing.T) {
	shortQMPTimeout(t)
	dir := t.TempDir()
	conns := fakeMonitor(t, dir, 3, "completed")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := waitMigration(ctx, dir); err != nil {
		t.Fatalf("waitMigration: %v", err)
	}
	if n := conns.Load(); n != 4 {
		t.Errorf("%d connections, want the 3 that timed out and one answered", n)
	}
}

// One that never answers is given up when the caller's time is up, and a
// failed migration or a monitor that is gone is an error at once.
func TestWaitMigrationGivesUp(t *testing.T) {
	shortQMPTimeout(t)
	t.Run("never answers", func(t *testing.T) {
		dir := t.TempDir()
		fakeMonitor(t, dir, 1<<30, "")
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		t0 := time.Now()
		err := waitMigration(ctx, dir)
		if err == nil || time.Since(t0) > 3*time.Second {
			t.Fatalf("waitMigration: %v after %s, want an error after about 1 s", err, time.Since(t0))
		}
	})
	t.Run("failed", func(t *testing.T) {
		dir := t.TempDir()
		fakeMonitor(t, dir, 0, "failed")
		if err := waitMigration(context.Background(), dir); err == nil || !strings.Contains(err.Error(), "failed") {
			t.Fatalf("waitMigration: %v, want the failure", err)
		}
	})
	t.Run("no monitor", func(t *testing.T) {
		dir := t.TempDir()
		t0 := time.Now()
		if err := waitMigration(context.Background(), dir); err == nil || time.Since(t0) > time.Second {
			t.Fatalf("waitMigration with no QEMU: %v after %s", err, time.Since(t0))
		}
	})
}
