package virtualbox

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/filelock"
)

// Error is a VBoxManage failure, whether or not it set its exit status:
// VBoxManage exits 0 on some errors, so its output is scanned for them.
type Error struct {
	Args    []string
	Message string // the "VBoxManage: error: ..." lines
	Code    string // e.g. VBOX_E_OBJECT_NOT_FOUND, when printed
}

func (e *Error) Error() string {
	return fmt.Sprintf("VBoxManage %s: %s", strings.Join(e.Args, " "), e.Message)
}

var (
	errorLine = regexp.MustCompile(`(?m)^VBoxManage(?:\.exe)?: error: (.*)$`)
	codeRe    = regexp.MustCompile(`Details: code (\w+)|\b(VBOX_E_\w+|VERR_\w+)\b`)
)

// scanError finds VBoxManage's error lines in its output.
func scanError(args []string, out []byte) *Error {
	ms := errorLine.FindAllStringSubmatch(string(out), -1)
	if len(ms) == 0 {
		return nil
	}
	var lines []string
	for _, m := range ms {
		// "Details: code ..." and "Context: ..." lines repeat the error
		// for developers; the first lines say it for users.
		if !strings.HasPrefix(m[1], "Details:") && !strings.HasPrefix(m[1], "Context:") {
			lines = append(lines, strings.TrimSpace(m[1]))
		}
	}
	e := &Error{Args: args, Message: strings.Join(lines, "; ")}
	if c := codeRe.FindStringSubmatch(string(out)); c != nil {
		e.Code = c[1] + c[2]
	}
	return e
}

// transient errors clear up when retried: a VM still settling after a state
// change, or another process holding a session or registry lock.
func transient(e *Error) bool {
	m := strings.ToLower(e.Message)
	for _, s := range []string{"object is not ready", "is already locked", "being unlocked", "lock the", "could not lock", "failed to lock"} {
		if strings.Contains(m, s) {
			return true
		}
	}
	return false
}

// notFound says the named VM is not registered.
func notFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && (e.Code == "VBOX_E_OBJECT_NOT_FOUND" || strings.Contains(e.Message, "Could not find a registered machine"))
}

// vbm runs VBoxManage through one Runner, turns error output into *Error
// even at exit status 0, and retries transient errors with backoff.
type vbm struct {
	runner   execx.Runner
	bin      string
	lockPath string        // host-wide lock for registry commands
	backoff  time.Duration // first retry delay; doubles
	tries    int
}

func (v *vbm) run(ctx context.Context, args ...string) (string, error) {
	if registryCommands[args[0]] {
		unlock, err := v.lock(ctx)
		if err != nil {
			return "", err
		}
		defer unlock()
	}
	return v.runUnlocked(ctx, args...)
}

// runUnlocked is run for callers that already hold the registry lock.
func (v *vbm) runUnlocked(ctx context.Context, args ...string) (string, error) {
	delay := v.backoff
	for try := 1; ; try++ {
		out, err := v.runner.Run(ctx, execx.Cmd{Name: v.bin, Args: args})
		if execx.IsNotFound(err) {
			return "", fmt.Errorf("VBoxManage is not installed (not found in PATH): install VirtualBox 7.0 or later, or use --provider qemu")
		}
		verr := scanError(args, out)
		if verr == nil && err != nil {
			verr = &Error{Args: args, Message: execx.Tail(out, 3)}
			if verr.Message == "" {
				verr.Message = err.Error()
			}
		}
		if verr == nil {
			return string(out), nil
		}
		if !transient(verr) || try >= v.tries || ctx.Err() != nil {
			return string(out), verr
		}
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return string(out), verr
		}
		delay *= 2
	}
}

// lock takes the host-wide registry lock (an flock, so a killed process
// cannot leave it held).
func (v *vbm) lock(ctx context.Context) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(v.lockPath), 0o700); err != nil {
		return nil, err
	}
	return filelock.Exclusive(ctx, v.lockPath, "VirtualBox's registry lock "+v.lockPath, nil)
}

// parseMachineReadable reads `key="value"` and `key=value` lines.
func parseMachineReadable(out string) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		m[strings.Trim(k, `"`)] = strings.Trim(v, `"`)
	}
	return m
}

// parseVMList reads `list vms`: `"name" {uuid}` per line.
func parseVMList(out string) map[string]bool {
	names := map[string]bool{}
	re := regexp.MustCompile(`^"(.*)" \{[0-9a-fA-F-]+\}$`)
	for _, l := range strings.Split(out, "\n") {
		if m := re.FindStringSubmatch(strings.TrimSpace(l)); m != nil {
			names[m[1]] = true
		}
	}
	return names
}
