package guest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/internal/bounded"
	"github.com/agentfleet/agentfleet/internal/sshx"
	"github.com/agentfleet/agentfleet/internal/termsafe/termsafetest"
	"github.com/agentfleet/agentfleet/internal/vm"
	"golang.org/x/crypto/ssh"
)

// session is what the test guest hands a command: its channel, the
// request that started it, and what came with it.
type session struct {
	ch      ssh.Channel
	cmd     string // "" for a shell
	request string // "exec" or "shell"
	pty     bool
	resized chan [2]uint32
	signals chan string
	conn    net.Conn
}

func (s *session) exit(code uint32) {
	s.ch.CloseWrite()
	s.ch.SendRequest("exit-status", false, ssh.Marshal(struct{ S uint32 }{code}))
}

// startGuest runs an in-process sshd whose every command is handle, and
// returns a client connected to it.
func startGuest(t *testing.T, handle func(s *session)) *ssh.Client {
	t.Helper()
	host, client := newSigner(t), newSigner(t)
	cfg := &ssh.ServerConfig{PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
		if bytes.Equal(k.Marshal(), client.PublicKey().Marshal()) {
			return nil, nil
		}
		return nil, errors.New("unknown key")
	}}
	cfg.AddHostKey(host)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go serve(nc, cfg, handle)
		}
	}()
	c, err := sshx.Dial(context.Background(), sshx.Target{Addr: ln.Addr().String(), User: "agent", Signer: client, HostKey: host.PublicKey()}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func serve(nc net.Conn, cfg *ssh.ServerConfig, handle func(s *session)) {
	sc, chans, reqs, err := ssh.NewServerConn(nc, cfg)
	if err != nil {
		return
	}
	defer sc.Close()
	go ssh.DiscardRequests(reqs)
	for nch := range chans {
		ch, creqs, err := nch.Accept()
		if err != nil {
			continue
		}
		s := &session{ch: ch, resized: make(chan [2]uint32, 16), signals: make(chan string, 4), conn: nc}
		go func() {
			defer ch.Close()
			started := false
			for r := range creqs {
				switch r.Type {
				case "pty-req":
					s.pty = true
					r.Reply(true, nil)
				case "window-change":
					s.resized <- [2]uint32{binary.BigEndian.Uint32(r.Payload[0:]), binary.BigEndian.Uint32(r.Payload[4:])}
				case "signal":
					s.signals <- string(r.Payload[4:])
				case "exec", "shell":
					s.request = r.Type
					if r.Type == "exec" {
						s.cmd = string(r.Payload[4:])
					}
					r.Reply(!started, nil)
					if !started {
						started = true
						go func() { handle(s); ch.Close() }()
					}
				default:
					r.Reply(false, nil)
				}
			}
		}()
	}
}

func newSigner(t *testing.T) ssh.Signer {
	kp, err := sshx.NewKeyPair("test")
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.ParsePrivateKey(kp.PrivatePEM)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// exitGuest answers "exit N" with N after "bye" on stderr, and echoes
// its stdin to stdout otherwise.
func exitGuest(s *session) {
	var code uint32
	if _, err := fmt.Sscanf(s.cmd, "exit %d", &code); err != nil {
		io.Copy(s.ch, s.ch)
	} else {
		fmt.Fprint(s.ch.Stderr(), "bye\n")
	}
	s.exit(code)
}

func TestExitCodes(t *testing.T) {
	r := OverSSH("m-1", startGuest(t, exitGuest))
	ctx := context.Background()
	var out bytes.Buffer
	if err := r.Run(ctx, Cmd{Step: "echo", Script: "cat", Stdin: strings.NewReader("hello"), Stdout: &out}); err != nil || out.String() != "hello" {
		t.Fatalf("exit 0: err=%v out=%q", err, out.String())
	}
	for _, code := range []int{1, 3, 42, 255} {
		err := r.Run(ctx, Cmd{Step: "try", Script: fmt.Sprintf("exit %d", code)})
		var e *Error
		if !errors.As(err, &e) || !e.Exited() || e.Code != code || ExitCode(err) != code || !IsExit(err, code) {
			t.Fatalf("exit %d: %#v", code, err)
		}
		if want := fmt.Sprintf("m-1: try: exit %d: bye", code); err.Error() != want {
			t.Fatalf("exit %d says %q, want %q", code, err, want)
		}
		// Wrapped, it is still read.
		if ExitCode(fmt.Errorf("outer: %w", err)) != code {
			t.Fatal("a wrapped exit lost its code")
		}
	}
	if ExitCode(nil) != 0 || ExitCode(errors.New("x")) != -1 {
		t.Fatal("ExitCode of nil or a foreign error")
	}
}

func TestStderrIsStreamedAndItsTailKept(t *testing.T) {
	r := OverSSH("m-1", startGuest(t, func(s *session) {
		fmt.Fprint(s.ch.Stderr(), "one\ntwo\n\nthree\nfour\n")
		s.exit(2)
	}))
	var live bytes.Buffer
	err := r.Run(context.Background(), Cmd{Step: "count", Script: "x", Stderr: &live})
	if live.String() != "one\ntwo\n\nthree\nfour\n" {
		t.Fatalf("the caller's stderr got %q", live.String())
	}
	if want := "m-1: count: exit 2: two; three; four"; err == nil || err.Error() != want {
		t.Fatalf("got %v, want %q", err, want)
	}
}

// A guest's stderr quoted in an error is its cleaned end on one line,
// whatever the guest wrote: escape sequences, C1 controls, overrides,
// carriage returns, invalid UTF-8, floods with and without newlines.
func TestStderrTailIsBoundedAndClean(t *testing.T) {
	for i, h := range termsafetest.Hostile {
		for _, flood := range []string{"noise noise noise\n", "no newline at all ", h + "\n", h} {
			r := OverSSH("m-1", startGuest(t, func(s *session) {
				chunk := bytes.Repeat([]byte(flood), (64<<10)/len(flood))
				for n := 0; n < 16; n++ {
					s.ch.Stderr().Write(chunk)
				}
				fmt.Fprintf(s.ch.Stderr(), "\nfatal: %s bad object %s\r\n", h, h)
				s.exit(1)
			}))
			err := r.Run(context.Background(), Cmd{Step: "unpack", Script: "x"})
			if err == nil {
				t.Fatal("exit 1 was nil")
			}
			msg := err.Error()
			if where, bad := termsafetest.RawControl(msg); bad {
				t.Fatalf("hostile %d, flood %q: raw %s in %q", i, flood, where, msg)
			}
			if strings.Contains(msg, "\n") {
				t.Fatalf("hostile %d: not one line: %q", i, msg)
			}
			if !strings.HasPrefix(msg, "m-1: unpack: exit 1: ") || !strings.Contains(msg, "bad object") {
				t.Fatalf("hostile %d: %.300q", i, msg)
			}
			if len(msg) > 5*quoteMax {
				t.Fatalf("hostile %d, flood %q: the error is %d bytes", i, flood, len(msg))
			}
		}
	}
}

// A guest that floods stderr for as long as it is read costs the host
// the tail, not the flood.
func TestStderrFloodIsBoundedInMemory(t *testing.T) {
	const total = 128 << 20
	chunk := bytes.Repeat([]byte("E"), 64<<10)
	r := OverSSH("m-1", startGuest(t, func(s *session) {
		for n := 0; n < total/len(chunk); n++ {
			if _, err := s.ch.Stderr().Write(chunk); err != nil {
				return
			}
		}
		s.exit(9)
	}))
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	before := ms.HeapInuse
	// The heap's peak while the flood is read: reading 128 MiB allocates,
	// keeping it would show.
	stop, peak := make(chan struct{}), make(chan uint64)
	go func() {
		var top uint64
		for {
			select {
			case <-stop:
				peak <- top
				return
			case <-time.After(5 * time.Millisecond):
			}
			runtime.ReadMemStats(&ms)
			top = max(top, ms.HeapInuse)
		}
	}()
	err := r.Run(context.Background(), Cmd{Step: "flood", Script: "x"})
	close(stop)
	top := <-peak
	if ExitCode(err) != 9 {
		t.Fatalf("a flood's exit: %v", err)
	}
	if top > before && top-before > 48<<20 {
		t.Fatalf("the heap grew by %d MiB reading a 128 MiB stderr", (top-before)>>20)
	}
	if len(err.Error()) > quoteMax+100 {
		t.Fatalf("the error is %d bytes", len(err.Error()))
	}
}

func TestOutputIsBoundedAndStopsTheGuest(t *testing.T) {
	var mu sync.Mutex
	sent := 0
	r := OverSSH("m-1", startGuest(t, func(s *session) {
		chunk := bytes.Repeat([]byte("A"), 64<<10)
		for n := 0; n < (1<<30)/len(chunk); n++ {
			if _, err := s.ch.Write(chunk); err != nil {
				break
			}
			mu.Lock()
			sent += len(chunk)
			mu.Unlock()
		}
		s.exit(0)
	}))
	out, err := r.Output(context.Background(), Cmd{Step: "read status", Script: "x"})
	if !errors.Is(err, bounded.ErrTooLong) || out != nil {
		t.Fatalf("a 1 GiB answer: %d bytes, %v", len(out), err)
	}
	if ExitCode(err) != -1 || !strings.HasPrefix(err.Error(), "m-1: read status: the guest's answer: ") {
		t.Fatalf("too long an answer: %v", err)
	}
	time.Sleep(100 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if sent > 32<<20 {
		t.Fatalf("the host read on: the guest sent %d MiB", sent>>20)
	}
}

// A connection that breaks mid-command is the transport's failure, never
// an exit code the caller could mistake for the command's.
func TestDroppedConnectionIsATransportError(t *testing.T) {
	started := make(chan struct{})
	r := OverSSH("m-1", startGuest(t, func(s *session) {
		fmt.Fprint(s.ch.Stderr(), "half way\n")
		close(started)
		time.Sleep(50 * time.Millisecond)
		s.conn.Close() // the guest dies mid-command
	}))
	err := r.Run(context.Background(), Cmd{Step: "unpack", Script: "x"})
	<-started
	var e *Error
	if !errors.As(err, &e) || e.Exited() || e.Code != -1 || ExitCode(err) != -1 || IsExit(err, 0) {
		t.Fatalf("a dropped connection: %#v", err)
	}
	if !strings.HasPrefix(err.Error(), "m-1: unpack: ") || regexp.MustCompile(`: exit -?[0-9]`).MatchString(err.Error()) {
		t.Fatalf("a dropped connection says %q", err)
	}
	// And a closed client cannot even start one.
	r.T.(sshTransport).c.Close()
	if err := r.Run(context.Background(), Cmd{Step: "again", Script: "x"}); ExitCode(err) != -1 || !strings.Contains(err.Error(), "m-1: again: open an SSH session") {
		t.Fatalf("a closed connection: %v", err)
	}
}

// A command that ends without a status (the channel closed) is a
// transport failure too.
func TestNoExitStatusIsATransportError(t *testing.T) {
	r := OverSSH("m-1", startGuest(t, func(s *session) { s.ch.CloseWrite() }))
	err := r.Run(context.Background(), Cmd{Step: "x", Script: "x"})
	if ExitCode(err) != -1 || !strings.Contains(err.Error(), "without an exit status") {
		t.Fatalf("no status: %v", err)
	}
}

func TestCancelStopsTheCommand(t *testing.T) {
	signalled := make(chan string, 1)
	r := OverSSH("m-1", startGuest(t, func(s *session) {
		select { // a command that runs until it is killed
		case sig := <-s.signals:
			signalled <- sig
		case <-time.After(time.Minute):
		}
	}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, Cmd{Step: "hang", Script: "sleep infinity"}) }()
	time.Sleep(50 * time.Millisecond)
	cancel()
	var err error
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("cancel did not end the run")
	}
	if !errors.Is(err, context.Canceled) || ExitCode(err) != -1 {
		t.Fatalf("a cancelled run: %v", err)
	}
	select {
	case sig := <-signalled:
		if sig != "KILL" {
			t.Fatalf("the guest got SIG%s", sig)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the guest's command was not killed")
	}
	// An already cancelled context runs nothing.
	if err := r.Run(ctx, Cmd{Step: "late", Script: "exit 0"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("a run on a cancelled context: %v", err)
	}
}

func TestPTYShellAndResize(t *testing.T) {
	got := make(chan string, 1)
	r := OverSSH("m-1", startGuest(t, func(s *session) {
		sz := <-s.resized
		got <- fmt.Sprintf("pty=%v cmd=%q size=%dx%d", s.pty, s.cmd, sz[0], sz[1])
		s.exit(4)
	}))
	resize := make(chan Size, 1)
	resize <- Size{Width: 120, Height: 40}
	err := r.Run(context.Background(), Cmd{Step: "shell", PTY: &PTY{Term: "xterm", Width: 80, Height: 24, Resize: resize}})
	if want := "pty=true cmd=\"\" size=120x40"; <-got != want {
		t.Fatalf("the guest did not get a shell on a resized terminal")
	}
	if ExitCode(err) != 4 {
		t.Fatalf("the shell's exit: %v", err)
	}
}

// With no command and no terminal (fleet ssh VM < script.sh) the guest
// gets a shell that reads stdin, as OpenSSH gives it, not an empty exec.
func TestNoCommandIsAShellWithoutATerminal(t *testing.T) {
	got := make(chan string, 1)
	r := OverSSH("m-1", startGuest(t, func(s *session) {
		in, _ := io.ReadAll(s.ch)
		got <- fmt.Sprintf("%s pty=%v stdin=%q", s.request, s.pty, in)
		s.exit(0)
	}))
	if err := r.Run(context.Background(), Cmd{Step: "shell", Stdin: strings.NewReader("echo hi\n")}); err != nil {
		t.Fatal(err)
	}
	if want := `shell pty=false stdin="echo hi\n"`; <-got != want {
		t.Fatalf("the guest got something else than a shell reading stdin")
	}
}

// fakeAgent is a guest agent: script -> answer.
type fakeAgent struct {
	spec vm.Spec
	run  func(ctx context.Context, script string) (string, error)
}

func (f *fakeAgent) GuestRun(ctx context.Context, s vm.Spec, script string) (string, error) {
	f.spec = s
	return f.run(ctx, script)
}

type exitErr struct{ code int }

func (e exitErr) Error() string {
	return fmt.Sprintf("guest script exited %d: \x1b]0;owned\x07nope", e.code)
}
func (e exitErr) ExitStatus() int { return e.code }

func TestGuestAgentTransport(t *testing.T) {
	f := &fakeAgent{}
	r := OverAgent(f, vm.Spec{Name: "w-1"})
	ctx := context.Background()
	f.run = func(_ context.Context, script string) (string, error) { return "ran " + script, nil }
	out, err := r.Output(ctx, Cmd{Step: "identity", Script: "true"})
	if err != nil || string(out) != "ran true" || f.spec.Name != "w-1" {
		t.Fatalf("out=%q err=%v spec=%+v", out, err, f.spec)
	}
	// A channel that fails is a transport error; its text is cleaned.
	// A driver's error that names the machine is said without it.
	broken := errors.New("guest agent guest-exec: \x1b[2Kno agent\r\nforged")
	f.run = func(context.Context, string) (string, error) { return "", fmt.Errorf("w-1: %w", broken) }
	err = r.Run(ctx, Cmd{Step: "check the guest agent", Script: "true"})
	if ExitCode(err) != -1 || !errors.Is(err, broken) || !strings.HasPrefix(err.Error(), "w-1: check the guest agent: guest agent guest-exec: ") {
		t.Fatalf("a broken channel: %v", err)
	}
	if where, bad := termsafetest.RawControl(err.Error()); bad || strings.Contains(err.Error(), "\n") {
		t.Fatalf("raw %s in %q", where, err)
	}
	// An error that carries a status is the script's exit.
	f.run = func(context.Context, string) (string, error) { return "", fmt.Errorf("w-1: %w", exitErr{5}) }
	err = r.Run(ctx, Cmd{Step: "identity", Script: "false"})
	if ExitCode(err) != 5 || !strings.HasPrefix(err.Error(), "w-1: identity: exit 5: guest script exited 5") || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("an exit over the agent: %v", err)
	}
	if where, bad := termsafetest.RawControl(err.Error()); bad {
		t.Fatalf("raw %s in %q", where, err)
	}
	// Cancelled: the agent is not asked.
	f.run = func(context.Context, string) (string, error) { t.Fatal("asked after cancel"); return "", nil }
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := r.Run(cctx, Cmd{Step: "x", Script: "true"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
	// It has no stdin to give.
	if err := r.Run(ctx, Cmd{Step: "x", Script: "cat", Stdin: strings.NewReader("x")}); ExitCode(err) != -1 {
		t.Fatalf("stdin over the agent: %v", err)
	}
	// An answer past the limit is refused, not kept.
	f.run = func(context.Context, string) (string, error) { return strings.Repeat("A", bounded.Answer+1), nil }
	if _, err := r.Output(ctx, Cmd{Step: "big", Script: "x"}); !errors.Is(err, bounded.ErrTooLong) {
		t.Fatalf("a big agent answer: %v", err)
	}
}
