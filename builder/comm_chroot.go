package builder

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
)

// chrootComm is a Communicator that runs commands in a chroot. A cancel
// kills the command and everything it started (its own process group), so
// a Ctrl-C'd build does not wait for apt to finish.
type chrootComm struct {
	Root string
}

var _ Communicator = (*chrootComm)(nil)

func (c *chrootComm) Run(ctx context.Context, command string, out io.Writer) (int, error) {
	cmd := exec.CommandContext(ctx, "chroot", c.Root, "/bin/sh", "-c", command)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LC_ALL=C.UTF-8"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case ctx.Err() != nil:
		return -1, ctx.Err()
	case errors.As(err, &ee):
		if ee.ExitCode() < 0 {
			return 128 + int(syscall.SIGKILL), nil
		}
		return ee.ExitCode(), nil
	}
	return -1, err
}

func (c *chrootComm) path(p string) string { return filepath.Join(c.Root, filepath.Clean("/"+p)) }

func (c *chrootComm) Upload(dst string, r io.Reader) error {
	if err := os.MkdirAll(filepath.Dir(c.path(dst)), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(c.path(dst), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (c *chrootComm) Download(src string, w io.Writer) error {
	f, err := os.Open(c.path(src))
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}
