package fleet

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/agentfleet/agentfleet/images"
	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/vm"
	"github.com/agentfleet/agentfleet/internal/workspace"
)

// What applies when neither a flag nor fleet.hcl says otherwise. The CLI
// shows these as its flags' defaults; the decisions are made here.

// The default machine shape, which fleet image build warms.
const (
	DefaultCPUs      = 2
	DefaultMemoryMiB = 2048
)

// DefaultProvider is the hypervisor of a new fleet that nothing names.
const DefaultProvider = "qemu"

// DefaultImages are what spawn boots when it is given no image: the first
// of them that is built.
var DefaultImages = []string{"ubuntu-24.04", "debian-12"}

// ChooseProvider decides a fleet's hypervisor, once: a fleet with
// machines keeps the driver it was made with (asking for another is an
// error); a new one takes requested (--provider, FLEET_PROVIDER), else
// fleet.hcl's (project, which may be nil), else DefaultProvider.
func ChooseProvider(st Store, requested string, project func() string) (string, error) {
	if s, err := st.Load(); err == nil && s.Driver != "" && len(s.Machines) > 0 {
		if requested != "" && requested != s.Driver {
			return "", fmt.Errorf("fleet %s runs on %s: --provider %s cannot change that (destroy it first)", st.Fleet, s.Driver, requested)
		}
		return s.Driver, nil
	}
	if requested == "" && project != nil {
		requested = project()
	}
	if requested == "" {
		requested = DefaultProvider
	}
	return requested, nil
}

// SpawnImage is the image spawn boots: ref (NAME or NAME@VERSION, "" for
// the first built of DefaultImages) for arch, with the disk the driver
// boots (the qcow2, or the export its ImageFormat names).
func SpawnImage(store images.Store, ref string, arch vm.Arch, d vm.Driver) (ImageRef, error) {
	var img images.Image
	var err error
	if ref != "" {
		img, err = store.ResolveArch(ref, arch)
	} else {
		for _, name := range DefaultImages {
			if img, err = store.ResolveArch(name, arch); err == nil {
				break
			}
		}
	}
	if err != nil {
		return ImageRef{}, err
	}
	disk := img.Disk
	if f := d.Capabilities().ImageFormat; f != "" && f != "qcow2" {
		if _, has := img.Outputs[f]; !has {
			return ImageRef{}, fmt.Errorf("image %s@%s has no %s for the %s driver: build one with: fleet image build %s --output qcow2,%s", img.Name, img.Version, strings.ToUpper(f), d.Name(), img.Name, f)
		}
		// Checked as it is handed out: an export from outside is data.
		if disk, err = img.OutputPath(f); err != nil {
			return ImageRef{}, err
		}
	}
	return StoredImage(img, disk), nil
}

// StoredImage is what the controller needs of a stored image, booting
// disk (the qcow2, or the driver's own export of it).
func StoredImage(img images.Image, disk string) ImageRef {
	r := ImageRef{Name: img.Name, Version: img.Version, Disk: disk, Recipe: img.Recipe, Boot: img.DirectBoot(), Arch: img.Arch}
	if disk == img.Disk {
		r.DiskSHA256 = img.DiskSHA256
	}
	return r
}

// ProjectAt is the fleet.hcl of the project folder dir ("" for the
// working directory): the nearest one up to the repository's top.
func ProjectAt(ctx context.Context, dir string) (Project, error) {
	dir, err := absDir(dir)
	if err != nil {
		return Project{}, err
	}
	top := dir
	if repo, err := workspace.Open(ctx, execx.Local{}, dir); err == nil {
		top = repo.Dir
	}
	return FindProject(dir, top)
}

// ProjectWorkspace is how the project in dir ("" for the working
// directory) reaches the machines, with its fleet.hcl: mode if given
// (--sync), else fleet.hcl's sync, else git inside a git repository and
// rsync elsewhere. excludes and writable add to fleet.hcl's. All of / or
// the home folder is never brought in or shared.
func ProjectWorkspace(ctx context.Context, dir, mode string, excludes []string, writable bool) (WorkspaceRequest, Project, error) {
	dir, err := absDir(dir)
	if err != nil {
		return WorkspaceRequest{}, Project{}, err
	}
	_, repoErr := workspace.Open(ctx, execx.Local{}, dir)
	proj, err := ProjectAt(ctx, dir)
	if err != nil {
		return WorkspaceRequest{}, Project{}, err
	}
	if mode == "" {
		mode = proj.Sync
	}
	if mode == "" {
		mode = string(SyncRsync)
		if repoErr == nil {
			mode = string(SyncGit)
		}
	}
	m, err := ParseSyncMode(mode)
	if err != nil {
		return WorkspaceRequest{}, Project{}, err
	}
	if m == SyncRsync || m == SyncShared {
		if home, _ := os.UserHomeDir(); dir == "/" || dir == home {
			return WorkspaceRequest{}, Project{}, fmt.Errorf("not bringing all of %s into VMs: cd into a project, pass --project DIR, or --sync none", dir)
		}
	}
	return WorkspaceRequest{Mode: m, Dir: dir, Excludes: append(proj.Exclude, excludes...), Writable: writable || proj.SharedWritable}, proj, nil
}

// SessionRequest is what starting agent (a profile name, "" for
// fleet.hcl's or the default) on this project asks for, the task aside.
// The credential comes from this process's environment.
func (p Project) SessionRequest(agent string) (SessionRequest, error) {
	prof, err := p.Profile(agent)
	if err != nil {
		return SessionRequest{}, err
	}
	return SessionRequest{Profile: prof, Setup: p.SetupCommands(), Getenv: os.Getenv}, nil
}

func absDir(dir string) (string, error) {
	if dir == "" {
		wd, err := os.Getwd()
		if err != nil {
			return "", err
		}
		dir = wd
	}
	return filepath.Abs(dir)
}
