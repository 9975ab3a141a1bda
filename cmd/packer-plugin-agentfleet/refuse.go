package main

import (
	"context"
	"errors"
	"io"
	"os"
	"sync/atomic"

	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
)

// errProvisioners is what a provisioner block that needs the machine gets.
var errProvisioners = errors.New("the agentfleet builder runs its own provision recipe: " +
	"list your scripts in the source block (scripts = [\"./corp-tools.sh\"]) instead of provisioner blocks, " +
	"so the recipe hash that names the image covers them")

// refusingComm is the communicator Packer's provisioners get: the first
// call cancels the provisioning (provisioners retry failed uploads for
// minutes otherwise) and every call fails with errProvisioners, so a
// template with provisioners stops at once, before the bake, instead of
// having them silently skipped.
type refusingComm struct {
	stop context.CancelCauseFunc
	used atomic.Bool
}

func (c *refusingComm) refuse() error {
	c.used.Store(true)
	c.stop(errProvisioners)
	return errProvisioners
}

func (c *refusingComm) Start(context.Context, *packersdk.RemoteCmd) error { return c.refuse() }
func (c *refusingComm) Upload(string, io.Reader, *os.FileInfo) error      { return c.refuse() }
func (c *refusingComm) UploadDir(string, string, []string) error          { return c.refuse() }
func (c *refusingComm) Download(string, io.Writer) error                  { return c.refuse() }
func (c *refusingComm) DownloadDir(string, string, []string) error        { return c.refuse() }

// refuseProvisioners runs Packer's provision hook with a refusingComm.
// Provisioners that never touch the machine (shell-local) still run.
func refuseProvisioners(ctx context.Context, ui packersdk.Ui, hook packersdk.Hook) error {
	hctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	comm := &refusingComm{stop: stop}
	err := hook.Run(hctx, packersdk.HookProvision, ui, comm, nil)
	if comm.used.Load() {
		return errProvisioners
	}
	return err
}
