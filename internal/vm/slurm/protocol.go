// Package slurm is the driver that runs each machine as one Slurm job on a
// cluster node. The controller side (Driver) submits the job, follows it
// through squeue and reaches it only through Slurm: `srun --jobid J
// --overlap` runs `fleet __slurm-node call` inside the running job, which
// relays one request to the job's own process (`fleet __slurm-node run`,
// NodeMain) over a unix socket in its owner-only folder on the node. That
// process boots the machine there with the node's QEMU driver, runs its
// proxies beside it, and removes everything when the job ends.
//
// The secrets a machine needs (its host key, the model credential for
// the credential proxy) travel only in the start request, on srun's
// standard input: never in the job script, the job's environment or a
// file, all of which Slurm keeps (slurmctld saves a batch job's script
// and environment in its state folder).
package slurm

import (
	"context"
	"io"

	"github.com/agentfleet/agentfleet/internal/vm"
)

// NodeCommand is the fleet binary's hidden subcommand on a node.
const NodeCommand = "__slurm-node"

// request is one message from the controller to a job's node process.
type request struct {
	Op string `json:"op"` // start, push, pull, save-prebuild, stop
	// start
	Spec        vm.Spec     `json:"spec,omitempty"`
	ForwardHost string      `json:"forward_host,omitempty"` // the node address the controller reaches
	Files       []nodeFile  `json:"files,omitempty"`        // start and push: proxy files for the machine folder
	Images      []imageFile `json:"images,omitempty"`       // start: host paths the spec names, with digests
	// Registry is where an image file not on the node's shared path is
	// pulled from, by its digest (nil: shared paths only).
	Registry *ImageRegistry `json:"registry,omitempty"`
	// pull
	Names []string `json:"names,omitempty"`
	// From asks for a file's bytes from an offset on, for a log the
	// controller keeps a copy of: what it has of the file named by inode
	// (From[name].Ino), so a rotated log is sent from its start.
	From map[string]pullFrom `json:"from,omitempty"`
	// save-prebuild
	Prebuild *prebuildSave `json:"prebuild,omitempty"`
}

// prebuildSave asks the node to save its running machine, restored from
// the node's warm template and set up by the controller, as the
// project's prebuild of Key there.
type prebuildSave struct {
	Key  string          `json:"key"`
	Info vm.PrebuildInfo `json:"info"`
}

// pullFrom is where the controller's copy of a node's log ends.
type pullFrom struct {
	Ino    uint64 `json:"ino"`
	Offset int64  `json:"offset"`
}

// nodeFile is one file of the machine folder, by its base name.
type nodeFile struct {
	Name string `json:"name"`
	Data []byte `json:"data"`
	// pull: where Data starts in the node's file, the file's size and its
	// inode (a log rotated on the node is another inode).
	Offset int64  `json:"offset,omitempty"`
	Size   int64  `json:"size,omitempty"`
	Ino    uint64 `json:"ino,omitempty"`
}

// imageFile is a read-only file the machine boots from (disk, kernel,
// initrd): at Path on a path every node shares, or the blob of its digest
// in the fleet's registry, checked against SHA256 and Size when copied
// into the node's store.
type imageFile struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// ImageRegistry is the OCI repository `fleet image push` sent the fleet's
// images to (host[:port]/repository): each of an image's files is a blob
// there under its own sha256.
type ImageRegistry struct {
	Ref       string `json:"ref"`
	PlainHTTP bool   `json:"plain_http,omitempty"`
}

// BlobOpener streams the blob of digest sum (size bytes) from reg; the
// node checks the digest as it copies. The CLI hands in the images
// package's (internal packages never import it).
type BlobOpener func(ctx context.Context, reg ImageRegistry, sum string, size int64) (io.ReadCloser, error)

// reply is the node process's answer.
type reply struct {
	Error   string `json:"error,omitempty"`
	SSHAddr string `json:"ssh_addr,omitempty"`
	Accel   string `json:"accel,omitempty"`
	Note    string `json:"note,omitempty"` // start: restored from the node's template, or why it booted
	// Prebuilt: start restored it from the node's prebuild of
	// Spec.HostPrebuild (the project's setup ran in it).
	Prebuilt bool       `json:"prebuilt,omitempty"`
	Files    []nodeFile `json:"files,omitempty"`
}

// Limits on what crosses the channel: a request carries small proxy files
// and a spec, never a disk.
const (
	maxRequest  = 8 << 20
	maxFile     = 2 << 20
	maxFiles    = 32
	maxReply    = 8 << 20
	maxNameSize = 64
	maxKeySize  = 16 << 10 // a prebuild key (the controller's is a digest and a make's id)
	// a prebuild's description (project, setup commands, inputs): well
	// within what a template.json may hold
	maxPrebuildInfo = 256 << 10
)

// credentialVars are the variables that may hold a model credential: kept
// out of every Slurm command fleet runs, and dropped by the job's process.
var credentialVars = []string{"ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_AUTH_TOKEN", "FLEET_UPSTREAM_CREDENTIAL"}
