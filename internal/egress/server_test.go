package egress

import (
	"bufio"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// guestPair is what QEMU gives a proxy: one end of a socketpair. The test
// keeps the other end as the guest.
func guestPair(t *testing.T) (guest net.Conn, proxyEnd *os.File) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	gf := os.NewFile(uintptr(fds[0]), "guest")
	defer gf.Close()
	g, err := net.FileConn(gf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g, os.NewFile(uintptr(fds[1]), "proxy-end")
}

// runServer starts a Server on a fresh folder, as `fleet __proxyd` does.
func runServer(t *testing.T, s *Server) (dir string, done chan error) {
	t.Helper()
	dir = t.TempDir()
	if s.Audit == nil {
		s.Audit = NewAudit(dir)
	}
	t.Chdir(dir)
	done = make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); <-done })
	go func() { done <- s.Run(ctx, dir) }()
	for i := 0; i < 200; i++ {
		if _, err := os.Stat(filepath.Join(dir, SocketFile)); err == nil {
			return dir, done
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("the server never listened")
	return
}

func noStart() error { return os.ErrNotExist }

func TestServerHoldsConnectionsAtTheCap(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	served := 0
	s := &Server{MaxConns: 3, Handlers: map[byte]func(context.Context, net.Conn){
		KindEgress: func(ctx context.Context, c net.Conn) {
			mu.Lock()
			served++
			mu.Unlock()
			c.Write([]byte("served\n"))
			select {
			case <-release:
			case <-ctx.Done():
			}
			c.Close()
		},
	}}
	dir, _ := runServer(t, s)
	var guests []net.Conn
	for i := 0; i < 5; i++ {
		g, end := guestPair(t)
		if err := Handoff(dir, KindEgress, end, noStart); err != nil {
			t.Fatalf("handoff %d: %v", i, err)
		}
		end.Close() // as the shim exits
		guests = append(guests, g)
	}
	var ok, refused int
	for _, g := range guests {
		g.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, _ := bufio.NewReader(g).ReadString('\n')
		switch {
		case line == "served\n":
			ok++
		case strings.Contains(line, "503"):
			refused++
		default:
			t.Errorf("guest read %q", line)
		}
	}
	if ok != 3 || refused != 2 || s.Active() != 3 {
		t.Fatalf("served %d, refused %d, active %d; want 3, 2, 3", ok, refused, s.Active())
	}
	close(release)
	deadline := time.Now().Add(5 * time.Second)
	for s.Active() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	// Below the cap again: a new connection is served.
	g, end := guestPair(t)
	if err := Handoff(dir, KindEgress, end, noStart); err != nil {
		t.Fatal(err)
	}
	end.Close()
	g.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, _ := bufio.NewReader(g).ReadString('\n'); line != "served\n" {
		t.Errorf("after the others ended: %q", line)
	}
	denies := 0
	f, _ := os.Open(filepath.Join(dir, AuditFile))
	ReadEntries(f, func(e Entry) {
		if e.Verdict == "deny" && strings.Contains(e.Reason, "cap of 3") {
			denies++
		}
	})
	f.Close()
	if denies != 2 {
		t.Errorf("%d refusals logged, want 2", denies)
	}
}

func TestClosingTheServersCopyEndsTheGuestConnection(t *testing.T) {
	s := &Server{Handlers: map[byte]func(context.Context, net.Conn){
		KindCredentials: func(_ context.Context, c net.Conn) { c.Write([]byte("bye")); c.Close() },
	}}
	dir, _ := runServer(t, s)
	g, end := guestPair(t)
	if err := Handoff(dir, KindCredentials, end, noStart); err != nil {
		t.Fatal(err)
	}
	end.Close()
	g.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 16)
	n, _ := g.Read(b)
	if _, err := g.Read(b[n:]); err == nil || strings.Contains(err.Error(), "timeout") || string(b[:n]) != "bye" {
		t.Fatalf("read %q then %v; want bye then EOF", b[:n], err)
	}
}

func TestServerExitsWhenIdleOrItsFolderGoes(t *testing.T) {
	s := &Server{IdleExit: 200 * time.Millisecond, Poll: 20 * time.Millisecond, Handlers: map[byte]func(context.Context, net.Conn){}}
	dir, done := runServer(t, s)
	select {
	case <-done:
		done <- nil // for the cleanup
	case <-time.After(5 * time.Second):
		t.Fatal("an idle server did not exit")
	}
	if _, err := os.Stat(filepath.Join(dir, SocketFile)); err == nil {
		t.Error("the socket outlived the server")
	}

	s = &Server{Poll: 20 * time.Millisecond, Handlers: map[byte]func(context.Context, net.Conn){}}
	dir, done = runServer(t, s)
	os.Remove(filepath.Join(dir, SocketFile)) // as destroy removes the folder
	select {
	case <-done:
		done <- nil
	case <-time.After(5 * time.Second):
		t.Fatal("a server whose machine was removed did not exit")
	}
}

func TestOneServerPerMachine(t *testing.T) {
	s := &Server{Handlers: map[byte]func(context.Context, net.Conn){}}
	dir, _ := runServer(t, s)
	if err := (&Server{}).Run(context.Background(), dir); err != ErrServing {
		t.Errorf("a second server on one machine: %v", err)
	}
}

func TestHandoffStartsAServerWhenNoneAnswers(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	s := &Server{Handlers: map[byte]func(context.Context, net.Conn){
		KindEgress: func(_ context.Context, c net.Conn) { c.Write([]byte("ok")); c.Close() },
	}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	defer func() { cancel(); <-done }()
	starts := 0
	start := func() error {
		starts++
		if starts == 1 {
			go func() { done <- s.Run(ctx, dir) }()
		}
		return nil
	}
	g, end := guestPair(t)
	if err := Handoff(dir, KindEgress, end, start); err != nil {
		t.Fatal(err)
	}
	end.Close()
	g.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 2)
	if _, err := g.Read(b); err != nil || string(b) != "ok" {
		t.Fatalf("%q %v", b, err)
	}
	if starts < 1 {
		t.Error("no server was started")
	}
	// A start that fails is reported, not waited on.
	g2, end2 := guestPair(t)
	_ = g2
	cancel()
	<-done
	done <- nil
	if err := Handoff(dir, KindEgress, end2, noStart); err == nil {
		t.Error("a handoff with no server and a failing start succeeded")
	}
}

// A flood of new connections gets the bucket's burst, then its rate, never
// more, and a bounded number of log lines.
func TestServerLimitsTheRateOfNewConnections(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1_000_000, 0)
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	s := &Server{ConnRate: 10, ConnBurst: 20, Handlers: map[byte]func(context.Context, net.Conn){
		KindEgress: func(_ context.Context, c net.Conn) { c.Write([]byte("served\n")); c.Close() },
	}}
	s.clock = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	dir, _ := runServer(t, s)
	flood := func(n int) (served int) {
		for i := 0; i < n; i++ {
			g, end := guestPair(t)
			if err := Handoff(dir, KindEgress, end, noStart); err != nil {
				t.Fatalf("handoff %d: %v", i, err)
			}
			end.Close()
			g.SetReadDeadline(time.Now().Add(5 * time.Second))
			line, _ := bufio.NewReader(g).ReadString('\n')
			switch {
			case line == "served\n":
				served++
			case !strings.Contains(line, "503"):
				t.Fatalf("guest read %q", line)
			}
			g.Close()
		}
		return served
	}
	if got := flood(200); got != 20 {
		t.Errorf("a flood of 200 at once: %d served, want the burst of 20", got)
	}
	advance(time.Second)
	if got := flood(50); got != 10 {
		t.Errorf("a second later: %d served, want the rate's 10", got)
	}
	advance(time.Hour)
	if got := flood(100); got != 20 {
		t.Errorf("an hour later: %d served, want the burst of 20, not more", got)
	}
	var lines []string
	f, _ := os.Open(filepath.Join(dir, AuditFile))
	ReadEntries(f, func(e Entry) {
		if strings.Contains(e.Reason, "new proxy connections a second") {
			lines = append(lines, e.Reason)
		}
	})
	f.Close()
	// One line at the first refusal; none within the next ten seconds;
	// one an hour later counting every refusal since: 179 + 40 + 1.
	if len(lines) != 2 || !strings.Contains(lines[0], "rate of 10 new proxy connections a second (burst 20): 1 refused") ||
		!strings.Contains(lines[1], ": 220 refused since the last such line") {
		t.Errorf("log lines %q", lines)
	}
}

func TestTokenBucket(t *testing.T) {
	var b tokenBucket
	t0 := time.Unix(0, 0).Add(time.Hour)
	taken := 0
	for i := 0; i < 1000; i++ {
		if b.take(t0, 50, 100) {
			taken++
		}
	}
	// Half a second buys 25 more; a clock that goes back buys nothing.
	for i := 0; i < 1000; i++ {
		if b.take(t0.Add(500*time.Millisecond), 50, 100) {
			taken++
		}
		if b.take(t0, 50, 100) {
			taken++
		}
	}
	if taken != 125 {
		t.Errorf("took %d, want 100 + 25", taken)
	}
}

// A shim facing a server that runs but does not take its connection (busy,
// or exiting) retries the socket and starts no second server: a flood of
// shims must not multiply processes.
func TestHandoffStartsNoServerWhileOneRuns(t *testing.T) {
	dir, err := filepath.Abs(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir) // Handoff works from the machine folder; restored after
	// A live process whose command line names the folder, as a server's does.
	busy := exec.Command("sh", "-c", "sleep 30", dir)
	if err := busy.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { busy.Process.Kill(); busy.Wait() }()
	os.WriteFile(filepath.Join(dir, PIDFile), []byte(strconv.Itoa(busy.Process.Pid)+"\n"), 0o600)
	for i := 0; i < 100; i++ { // its exec done: the command line is readable
		if _, ok := ServerPID(dir); ok {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	starts := 0
	_, end := guestPair(t)
	if err := Handoff(dir, KindEgress, end, func() error { starts++; return nil }); err == nil {
		t.Fatal("a handoff no server took succeeded")
	}
	if starts != 0 {
		t.Fatalf("%d servers started while one ran", starts)
	}
}
