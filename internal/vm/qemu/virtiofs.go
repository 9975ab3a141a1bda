package qemu

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/procx"
	"github.com/agentfleet/agentfleet/internal/vm"
)

// VirtiofsSocketFile is the vhost-user socket of a machine's shared folder.
const VirtiofsSocketFile = layout.VirtiofsFile

// virtiofsdPaths are where distributions install virtiofsd: QEMU 7.2's
// own (Debian 12), and the Rust daemon packaged on its own later.
var virtiofsdPaths = []string{"/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd", "/usr/lib/virtiofsd"}

func findVirtiofsd() string {
	for _, p := range virtiofsdPaths {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p
		}
	}
	return ""
}

// VirtiofsdArgs is the command that serves dir on sock: `unshare` gives
// it a private mount namespace, where a read-only share is a read-only
// bind mount of dir, so the host kernel refuses every write however the
// guest asks. The daemon exits when QEMU disconnects. Pure, for tests.
//
// virtiofsd accepts QEMU's connection before it daemonizes, so it is
// started in the background, in a session of its own (Ctrl-C on fleet
// does not reach it), logging to logFile; the caller waits for the socket.
func VirtiofsdArgs(daemon, sock, dir, logFile string, writable bool) []string {
	script := `set -e
if [ "$4" != rw ]; then mount --bind "$1" "$1"; mount -o remount,bind,ro "$1"; fi
setsid "$2" --socket-path="$3" -o source="$1" -o cache=auto -o sandbox=namespace --daemonize </dev/null >"$5" 2>&1 &`
	mode := "ro"
	if writable {
		mode = "rw"
	}
	return []string{"--mount", "--propagation", "private", "sh", "-c", script, "virtiofsd", dir, daemon, sock, mode, logFile}
}

// ValidateShare checks, before anything is made, what a shared folder
// needs on this host.
func (d *Driver) ValidateShare(s *vm.Share) error { return validateShare(s) }

func validateShare(s *vm.Share) error {
	if runtime.GOOS != "linux" {
		return fmt.Errorf("shared folders need a Linux host: QEMU shares them through virtiofsd, which runs only there (on %s use --sync git or rsync)", runtime.GOOS)
	}
	if findVirtiofsd() == "" {
		return fmt.Errorf("shared folders need virtiofsd (Debian 12: apt-get install qemu-system-common; looked in %s)", strings.Join(virtiofsdPaths, ", "))
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("shared folders need root here: this host's virtiofsd (QEMU 7.2) must run as root; use --sync git or rsync, or run fleet with sudo")
	}
	if fi, err := os.Stat(s.HostDir); err != nil || !fi.IsDir() {
		return fmt.Errorf("shared folder %s is not a folder", s.HostDir)
	}
	return nil
}

// startVirtiofsd serves the share and waits for its socket.
func (d *Driver) startVirtiofsd(ctx context.Context, s vm.Spec) (string, error) {
	if err := validateShare(s.Share); err != nil {
		return "", err
	}
	sock := filepath.Join(s.Dir, VirtiofsSocketFile)
	stopVirtiofsd(sock)
	_ = os.Remove(sock)
	if _, err := d.Runner.Run(ctx, execx.Cmd{Name: "unshare", Args: VirtiofsdArgs(findVirtiofsd(), sock, s.Share.HostDir, filepath.Join(s.Dir, layout.VirtiofsdLog), s.Share.Writable)}); err != nil {
		return "", fmt.Errorf("start virtiofsd for %s: %w", s.Name, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(sock); err == nil {
			return sock, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	stopVirtiofsd(sock)
	log, _ := os.ReadFile(filepath.Join(s.Dir, layout.VirtiofsdLog))
	return "", fmt.Errorf("start virtiofsd for %s: no socket after 10s: %s", s.Name, execx.Tail(log, 5))
}

// stopVirtiofsd kills the daemon serving sock, if any (it normally exits
// with QEMU; this covers a QEMU that never connected).
func stopVirtiofsd(sock string) {
	killByCmdline(func(cmdline string) bool { return strings.Contains(cmdline, "--socket-path="+sock+"\x00") })
}

// killByCmdline kills every process whose NUL-separated command line
// match accepts, and waits (up to 2 s each) until it is gone. Linux reads
// /proc; elsewhere nothing is found.
func killByCmdline(match func(cmdline string) bool) {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !match(string(b)) {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if err != nil || pid <= 0 {
			continue
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
		for i := 0; i < 200 && procx.Alive(pid); i++ {
			time.Sleep(10 * time.Millisecond)
		}
	}
}
