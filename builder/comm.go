package builder

import (
	"context"
	"fmt"
	"io"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/sshx"
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
	return sshx.Run(ctx, c.client, command, nil, out, out)
}

func (c *sshComm) Upload(dst string, r io.Reader) error {
	return c.cat(context.Background(), "cat > "+execx.ShellQuote(dst), r, io.Discard, "upload to "+dst)
}

func (c *sshComm) Download(src string, w io.Writer) error {
	return c.cat(context.Background(), "cat "+execx.ShellQuote(src), nil, w, "download "+src)
}

func (c *sshComm) cat(ctx context.Context, command string, in io.Reader, out io.Writer, what string) error {
	code, err := sshx.Run(ctx, c.client, command, in, out, io.Discard)
	if err == nil && code != 0 {
		err = fmt.Errorf("exit status %d", code)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}
