package egress

import (
	"context"
	"errors"
	"fmt"
	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/procx"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// One long-lived proxy server per machine serves every guest connection.
// The hypervisor still starts a program per connection (QEMU's guestfwd
// cmd:), but that program is only a shim: it hands its socket to the
// machine's server over a unix socket (SCM_RIGHTS) and exits at once. So a
// guest's open connections cost goroutines in one process, not a process
// each, and the server can count them.
//
// The server is started by the first shim that finds none, and inherits
// the hypervisor's environment (the host credential) through it. It exits
// when stopped, when its machine folder goes, or after IdleExit without a
// connection: a machine whose QEMU died has none left.

// Files of the proxy server in a machine's folder, all written by it.
const (
	SocketFile = layout.ProxySocket  // where shims hand connections over
	LockFile   = layout.ProxyLock    // held while a server runs: one per machine
	PIDFile    = layout.ProxyPIDFile // for StopServer
)

// ErrServing means another server already serves the machine.
var ErrServing = errors.New("a proxy server already serves this machine")

// Kinds of connection a shim hands over.
const (
	KindEgress      byte = 'e'
	KindCredentials byte = 'c'
)

// DefaultMaxConns is a machine's cap on concurrent proxy connections.
const DefaultMaxConns = 256

// A machine's rate of new proxy connections, when its Server leaves it
// zero: each one has already cost a shim start (about 4 ms of host CPU),
// and what is refused beyond the rate costs the server a close.
const (
	DefaultConnRate  = 50 // a second, sustained
	DefaultConnBurst = 100
)

// rateLogEvery is how often a refusal over the rate is logged: one line
// per interval, counting those since the last, however hard the flood.
const rateLogEvery = 10 * time.Second

// Server serves one machine's proxy connections.
type Server struct {
	Handlers map[byte]func(ctx context.Context, c net.Conn)
	MaxConns int // 0: DefaultMaxConns
	Audit    *Audit
	// IdleExit ends the server after this long with no connection open.
	IdleExit time.Duration
	// Poll is how often the server checks its folder and idleness.
	Poll time.Duration
	// ConnRate and ConnBurst bound how fast new connections are taken, as
	// a token bucket: ConnRate a second, ConnBurst at once (0: defaults).
	ConnRate  float64
	ConnBurst int

	active atomic.Int64
	lastAt atomic.Int64 // unix nanos of the last connection's end or start

	// Only the accept loop touches these.
	clock      func() time.Time // time.Now unless a test sets it
	bucket     tokenBucket
	overRate   int       // refused over the rate since the last log line
	overRateAt time.Time // when that line was written
}

// Active is the number of connections being served.
func (s *Server) Active() int { return int(s.active.Load()) }

// Run serves dir's machine until ctx ends, the folder goes or the server
// idles out. It changes the process's working directory to dir, so the
// socket path stays short however deep the folder is.
func (s *Server) Run(ctx context.Context, dir string) error {
	if err := os.Chdir(dir); err != nil {
		return err
	}
	lock, err := os.OpenFile(LockFile, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return ErrServing
	}
	_ = os.Remove(SocketFile)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: SocketFile, Net: "unix"})
	if err != nil {
		return err
	}
	if err := os.WriteFile(PIDFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		ln.Close()
		return err
	}
	defer os.Remove(PIDFile)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.lastAt.Store(time.Now().UnixNano())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.watch(ctx, cancel)
		ln.Close()
	}()
	for {
		uc, err := ln.AcceptUnix()
		if err != nil {
			break
		}
		s.receive(ctx, uc, &wg)
	}
	cancel()
	// Handlers see the cancel and cut their connections; a stuck one does
	// not keep the process.
	waited := make(chan struct{})
	go func() { wg.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(2 * time.Second):
	}
	return nil
}

// watch ends the server when its folder is gone (the machine was
// destroyed) or nothing has been served for IdleExit.
func (s *Server) watch(ctx context.Context, cancel func()) {
	poll := s.Poll
	if poll <= 0 {
		poll = time.Second
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := os.Stat(SocketFile); err != nil {
			cancel()
			return
		}
		idle := time.Since(time.Unix(0, s.lastAt.Load()))
		if s.IdleExit > 0 && s.active.Load() == 0 && idle >= s.IdleExit {
			cancel()
			return
		}
	}
}

// receive takes one handed-over connection, acknowledges it (so the shim
// knows it arrived and may exit) and serves it, or refuses it at the cap.
func (s *Server) receive(ctx context.Context, uc *net.UnixConn, wg *sync.WaitGroup) {
	defer uc.Close()
	uc.SetDeadline(time.Now().Add(5 * time.Second))
	kind, conn, err := readHandoff(uc)
	if err != nil {
		return
	}
	serve, ok := s.Handlers[kind]
	if !ok {
		conn.Close()
		return
	}
	if _, err := uc.Write([]byte{1}); err != nil {
		conn.Close()
		return
	}
	if !s.takeRate(kind) {
		conn.SetWriteDeadline(time.Now().Add(time.Second))
		reply(conn, 503, "too many new connections from this machine; try again shortly")
		conn.Close()
		return
	}
	max := s.MaxConns
	if max <= 0 {
		max = DefaultMaxConns
	}
	if s.active.Add(1) > int64(max) {
		s.active.Add(-1)
		why := fmt.Sprintf("over this machine's cap of %d concurrent proxy connections", max)
		s.Audit.Log(Entry{Proxy: kindName(kind), Verdict: VerdictDeny, Reason: why})
		conn.SetWriteDeadline(time.Now().Add(time.Second))
		reply(conn, 503, why)
		conn.Close()
		return
	}
	s.lastAt.Store(time.Now().UnixNano())
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer func() {
			s.lastAt.Store(time.Now().UnixNano())
			s.active.Add(-1)
		}()
		serve(ctx, conn)
	}()
}

// takeRate takes a token for a new connection, or logs (at most once per
// rateLogEvery) that it is refused.
func (s *Server) takeRate(kind byte) bool {
	now := time.Now()
	if s.clock != nil {
		now = s.clock()
	}
	rate, burst := s.ConnRate, s.ConnBurst
	if rate <= 0 {
		rate = DefaultConnRate
	}
	if burst <= 0 {
		burst = DefaultConnBurst
	}
	if s.bucket.take(now, rate, float64(burst)) {
		return true
	}
	s.overRate++
	if s.overRateAt.IsZero() || now.Sub(s.overRateAt) >= rateLogEvery {
		why := fmt.Sprintf("over this machine's rate of %g new proxy connections a second (burst %d): %d refused since the last such line", rate, burst, s.overRate)
		s.Audit.Log(Entry{Proxy: kindName(kind), Verdict: VerdictDeny, Reason: why})
		s.overRate, s.overRateAt = 0, now
	}
	return false
}

// tokenBucket holds up to burst tokens and gains rate a second.
type tokenBucket struct {
	tokens float64
	last   time.Time
}

func (b *tokenBucket) take(now time.Time, rate, burst float64) bool {
	switch d := now.Sub(b.last); {
	case b.last.IsZero():
		b.tokens, b.last = burst, now
	case d > 0:
		b.tokens, b.last = min(burst, b.tokens+d.Seconds()*rate), now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// ParseKind is the handoff kind a proxy's name stands for.
func ParseKind(name string) (byte, error) {
	switch name {
	case ProxyEgress:
		return KindEgress, nil
	case ProxyCredentials:
		return KindCredentials, nil
	}
	return 0, fmt.Errorf("unknown proxy %q (egress or credentials)", name)
}

func kindName(k byte) string {
	if k == KindCredentials {
		return ProxyCredentials
	}
	return ProxyEgress
}

func readHandoff(uc *net.UnixConn) (byte, net.Conn, error) {
	buf := make([]byte, 1)
	oob := make([]byte, syscall.CmsgSpace(4))
	n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	if err != nil {
		return 0, nil, err
	}
	msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return 0, nil, errors.New("no connection handed over")
	}
	fds, err := syscall.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		for _, fd := range fds {
			syscall.Close(fd)
		}
		return 0, nil, errors.New("expected one descriptor")
	}
	f := os.NewFile(uintptr(fds[0]), "guest")
	defer f.Close() // FileConn holds its own copy
	c, err := net.FileConn(f)
	if err != nil || n != 1 {
		if c != nil {
			c.Close()
		}
		return 0, nil, fmt.Errorf("handed-over descriptor is not a connection: %v", err)
	}
	return buf[0], c, nil
}

// Handoff passes conn, a guest connection the hypervisor gave this
// process, to the proxy server of the machine in dir, starting one with
// start if none answers. It returns once the server has the connection.
func Handoff(dir string, kind byte, conn *os.File, start func() error) error {
	if err := os.Chdir(dir); err != nil {
		return err
	}
	send := func() error {
		uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: SocketFile, Net: "unix"})
		if err != nil {
			return err
		}
		defer uc.Close()
		uc.SetDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := uc.WriteMsgUnix([]byte{kind}, syscall.UnixRights(int(conn.Fd())), nil); err != nil {
			return err
		}
		// The acknowledgement: a server that was exiting as we connected
		// closes without one, and the next try starts a new server.
		if _, err := io.ReadFull(uc, make([]byte, 1)); err != nil {
			return fmt.Errorf("the proxy server did not take the connection: %w", err)
		}
		return nil
	}
	err := send()
	if err == nil {
		return nil
	}
	// A server is started only when none runs: a flood of shims facing a
	// busy server retries its socket, never multiplying processes.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if _, running := ServerPID(dir); !running {
			if serr := start(); serr != nil {
				return serr
			}
		}
		for i := 0; i < 50; i++ {
			if err = send(); err == nil {
				return nil
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return err
}

// ServerPID is the pid of the server serving dir, if one runs.
func ServerPID(dir string) (int, bool) {
	b, err := os.ReadFile(dir + "/" + PIDFile)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || !procx.Alive(pid) {
		return 0, false
	}
	// A recycled pid is never signalled: the process must name the folder.
	if cmd, err := procx.Cmdline(pid); err != nil || !strings.Contains(cmd, dir) {
		return 0, false
	}
	return pid, true
}

// StopServer ends dir's proxy server, if one runs, and waits for it: a
// stopped or destroyed machine leaves no process behind.
func StopServer(dir string) {
	pid, ok := ServerPID(dir)
	if !ok {
		return
	}
	syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; i < 40; i++ {
		if _, ok := ServerPID(dir); !ok {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	time.Sleep(50 * time.Millisecond)
}
