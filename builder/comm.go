package builder

import (
	"context"
	"io"

	"github.com/agentfleet/agentfleet/internal/execx"
	guestcmd "github.com/agentfleet/agentfleet/internal/guest" // builder has a type guest
	"golang.org/x/crypto/ssh"
)

// Communicator runs commands in the image being provisioned and moves
// files in and out of it: a chroot for mirror sources, SSH for cloud
// images. It is three methods rather than the Packer SDK's interface,
// whose package would pull go-getter, the Consul and Vault clients and part
// of the AWS SDK into the fleet binary, a tool that holds model keys.
type Communicator interface {
	// Run runs a shell command as the communicator's user, its output
	// (stdout and stderr) to out, and returns its exit status.
	Run(ctx context.Context, command string, out io.Writer) (int, error)
	Upload(dst string, r io.Reader) error
	Download(src string, w io.Writer) error
}

// sshComm is a Communicator over a guest's pinned-key SSH connection.
type sshComm struct{ client *ssh.Client }

var _ Communicator = (*sshComm)(nil)

func (c *sshComm) Run(ctx context.Context, command string, out io.Writer) (int, error) {
	err := c.runner().Run(ctx, guestcmd.Cmd{Step: "run a build command", Script: command, Stdout: out, Stderr: out})
	if code := guestcmd.ExitCode(err); code >= 0 {
		return code, nil // the caller says what a non-zero exit means
	}
	return -1, err
}

// runner runs commands in the guest (the build's one machine, so its
// errors need no name).
func (c *sshComm) runner() *guestcmd.Runner { return guestcmd.OverSSH("", c.client) }

func (c *sshComm) Upload(dst string, r io.Reader) error {
	return c.cat(context.Background(), "cat > "+execx.ShellQuote(dst), r, io.Discard, "upload to "+dst)
}

func (c *sshComm) Download(src string, w io.Writer) error {
	return c.cat(context.Background(), "cat "+execx.ShellQuote(src), nil, w, "download "+src)
}

func (c *sshComm) cat(ctx context.Context, command string, in io.Reader, out io.Writer, what string) error {
	return c.runner().Run(ctx, guestcmd.Cmd{Step: what, Script: command, Stdin: in, Stdout: out})
}
