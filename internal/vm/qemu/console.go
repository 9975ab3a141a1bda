package qemu

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/agentfleet/agentfleet/internal/bounded"
	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/layout"
)

// The serial console is bounded: a guest can write to its console as fast
// as the emulated UART goes, for as long as it runs, and a plain file
// would grow without end. QEMU serves the console on a socket
// (server=on,wait=off: with no client, it drops what the guest writes
// and never blocks it), and a small logger process, the fleet binary's
// ConsoleCommand, copies it into serial.log, rotating to serial.log.1 at
// ConsoleMax: a machine's consoles hold at most twice that. The logger
// starts with the machine and exits when QEMU closes the socket.

// ConsoleCommand is the hidden subcommand of the fleet binary that logs a
// machine's console: `fleet __console SOCKET LOG`.
const ConsoleCommand = "__console"

// ConsoleMax is the size at which a console log rotates.
var ConsoleMax int64 = 4 << 20

// consoleServe is the flag of the detached child that does the copying.
const consoleServe = "--serve"

// RunConsoleCommand is `fleet __console SOCKET LOG`: it starts the logger
// in a session of its own (so it outlives the fleet command) and returns
// once the logger is connected, so nothing the guest prints is lost.
func RunConsoleCommand(args []string) int {
	if len(args) == 3 && args[0] == consoleServe {
		err := ServeConsole(context.Background(), args[1], args[2], ConsoleMax, func() { fmt.Println("connected"); os.Stdout.Close(); os.Stderr.Close() })
		if err != nil {
			fmt.Fprintln(os.Stderr, "console:", err)
			return 1
		}
		return 0
	}
	if len(args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: fleet "+ConsoleCommand+" SOCKET LOG (started by the qemu driver)")
		return 2
	}
	if err := detachLogger(args[0], args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "console:", err)
		return 1
	}
	return 0
}

func detachLogger(sock, log string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self, ConsoleCommand, consoleServe, sock, log)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	stderr := bounded.NewTail(512)
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(io.LimitReader(out, 64)).ReadString('\n')
		line <- l
	}()
	select {
	case l := <-line:
		if l == "connected\n" {
			return cmd.Process.Release()
		}
		cmd.Wait()
		return fmt.Errorf("the console logger did not connect to %s: %s", sock, stderr.String())
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		return fmt.Errorf("the console logger did not connect to %s within 10s", sock)
	}
}

// startConsoleLogger starts the machine's console logger and, for a
// guest started paused so that the logger misses nothing, continues it.
func (d *Driver) startConsoleLogger(ctx context.Context, ma MachineArgs, cont bool) error {
	args := append(append([]string(nil), d.ConsoleCommand[1:]...), ma.ConsoleSocket, ma.SerialLog)
	if _, err := d.Runner.Run(ctx, execx.Cmd{Name: d.ConsoleCommand[0], Args: args}); err != nil {
		return fmt.Errorf("log its console: %w", err)
	}
	if !cont {
		return nil // a restore continues the guest once its state is in
	}
	q, err := dialQMP(ctx, ma.QMPSocket)
	if err != nil {
		return err
	}
	defer q.Close()
	if _, err := q.execute("cont", nil); err != nil {
		return fmt.Errorf("continue the guest: %w", err)
	}
	return nil
}

// ServeConsole connects to QEMU's console socket and copies what it sends
// into log until QEMU closes it. The previous boot's log becomes log.1;
// the log rotates again whenever it reaches max.
func ServeConsole(ctx context.Context, sock, log string, max int64, ready func()) error {
	var conn net.Conn
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for {
		var d net.Dialer
		if conn, err = d.DialContext(ctx, "unix", sock); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("connect to the console socket: %w", err)
	}
	defer conn.Close()
	f, err := newRotatingFile(log, max)
	if err != nil {
		return err
	}
	defer f.Close()
	if ready != nil {
		ready()
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	_, err = io.CopyBuffer(f, conn, make([]byte, 32<<10))
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// rotatingFile appends to path and moves it to path.1 at max bytes.
type rotatingFile struct {
	path    string
	max     int64
	f       *os.File
	written int64
}

func newRotatingFile(path string, max int64) (*rotatingFile, error) {
	r := &rotatingFile{path: path, max: max}
	return r, r.rotate()
}

func (r *rotatingFile) rotate() error {
	if r.f != nil {
		r.f.Close()
	}
	if _, err := os.Stat(r.path); err == nil {
		if err := os.Rename(r.path, r.path+".1"); err != nil {
			return err
		}
	}
	f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	r.f, r.written = f, 0
	return nil
}

func (r *rotatingFile) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		if r.written >= r.max {
			if err := r.rotate(); err != nil {
				return n, err
			}
		}
		chunk := p[:min(int64(len(p)), r.max-r.written)]
		w, err := r.f.Write(chunk)
		n, r.written, p = n+w, r.written+int64(w), p[w:]
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func (r *rotatingFile) Close() error { return r.f.Close() }

// stopConsoleLogger ends the console logger of the machine in dir, if one
// still runs, and waits for it: it exits by itself once QEMU closes the
// socket, but a stop or destroy that returned must leave no process.
func stopConsoleLogger(dir string) {
	want := "\x00" + filepath.Join(dir, layout.SerialFile) + "\x00"
	killByCmdline(func(cmdline string) bool {
		return strings.Contains(cmdline+"\x00", want) && strings.Contains(cmdline, ConsoleCommand+"\x00")
	})
}
