package virtualbox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/vm"
	"github.com/hashicorp/go-hclog"
)

// Driver runs machines as VirtualBox linked clones.
type Driver struct {
	v *vbm
	// Home holds the templates, the registry lock and which clones use
	// which template (FLEET_HOME/virtualbox).
	Home string
	// Force allows VirtualBox 7.2.4, whose idle VMs burn a whole core.
	Force bool
	Log   hclog.Logger
}

var _ vm.Driver = (*Driver)(nil)

// New makes a driver that runs VBoxManage through r.
func New(r execx.Runner, home string, log hclog.Logger) *Driver {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Driver{
		v:    &vbm{runner: r, bin: "VBoxManage", lockPath: filepath.Join(home, layout.VirtualBoxLock), backoff: 200 * time.Millisecond, tries: 6},
		Home: home, Log: log.Named("virtualbox"),
	}
}

func (d *Driver) Name() string { return "virtualbox" }

// shareTag names the shared folder (sharedfolder add --name) the guest
// mounts.
const shareTag = "workspace"

// bootTimeout bounds a guest's boot to SSH: VirtualBox always has VT-x or
// AMD-V (it runs nothing without), so there is no slow case.
const bootTimeout = 5 * time.Minute

// Capabilities: linked clones, a serialized registry, vboxsf shared folders
// (the image needs virtualbox-guest-utils, which Ubuntu has and Debian 12
// does not; vboxsf has no owners of its own, so files are mounted as the
// agent's). No snapshots (savestate would work, but its saved machines are
// not yet tested here). No ForwardIP: NAT cannot be cut down to a proxy,
// so fleet refuses egress control here.
func (d *Driver) Capabilities() vm.Capabilities {
	return vm.Capabilities{ImageFormat: "ova", BootTimeout: bootTimeout, LinkedClones: true, SerializeRegistry: true,
		SharedFolders: true, ShareFS: "vboxsf", ShareTag: shareTag, ShareMountOptions: "uid=$(id -u),gid=$(id -g)"}
}

// Validate checks VBoxManage and its version before anything is made.
func (d *Driver) Validate(ctx context.Context) error {
	out, err := d.v.runUnlocked(ctx, versionArgs()...)
	if err != nil {
		return err
	}
	return checkVersion(strings.TrimSpace(out), d.Force)
}

// machineFile records what Create made, for Start and Delete.
const machineFile = layout.VirtualBoxRec

type machineRecord struct {
	Template string `json:"template"`
	SSHPort  int    `json:"ssh_port"`
}

func (d *Driver) record(dir string) (machineRecord, error) {
	var r machineRecord
	b, err := os.ReadFile(filepath.Join(dir, machineFile))
	if err != nil {
		return r, err
	}
	return r, json.Unmarshal(b, &r)
}

// templateName names the template for one OVA file: one per image version.
func templateName(ova string) string {
	h := sha256.Sum256([]byte(ova))
	base := strings.TrimSuffix(filepath.Base(ova), filepath.Ext(ova))
	base = regexp.MustCompile(`[^A-Za-z0-9._-]`).ReplaceAllString(base, "_")
	return "fleet-tpl-" + base + "-" + hex.EncodeToString(h[:4])
}

// Create makes a linked clone of the OVA's template, importing the template
// first if this is the image version's first machine. Every registry change
// happens under the host-wide lock; if any step fails the clone is
// unregistered again, so no half-made VM stays registered.
func (d *Driver) Create(ctx context.Context, s vm.Spec) (err error) {
	if s.Network.Restrict || len(s.Network.Forwards) > 0 {
		return errors.New("VirtualBox cannot confine a guest's network to the host proxies: use --egress open --credentials env")
	}
	if !strings.HasSuffix(s.BaseImage, ".ova") {
		return fmt.Errorf("VirtualBox needs the image's OVA, not %s (build it with: fleet image build NAME --output qcow2,ova)", s.BaseImage)
	}
	if _, err := os.Stat(s.BaseImage); err != nil {
		return fmt.Errorf("image OVA: %w", err)
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return err
	}
	iso := filepath.Join(s.Dir, layout.SeedFile)
	if err := vm.WriteSeedISO(iso, s.Seed); err != nil {
		return err
	}
	unlock, err := d.v.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	tpl, err := d.ensureTemplate(ctx, s.BaseImage)
	if err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	if _, err := d.v.runUnlocked(ctx, cloneArgs(tpl, s.Name, s.Dir)...); err != nil {
		return fmt.Errorf("clone %s: %w", s.Name, err)
	}
	defer func() {
		if err != nil {
			cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if _, uerr := d.v.runUnlocked(cctx, unregisterArgs(s.Name)...); uerr != nil && !notFound(uerr) {
				d.Log.Warn("could not unregister a half-made clone", "vm", s.Name, "error", uerr)
			}
		}
	}()
	steps := [][]string{
		modifyArgs(s.Name, s.CPUs, s.MemoryMiB, port, filepath.Join(s.Dir, layout.SerialFile)),
		addSeedControllerArgs(s.Name),
		attachSeedArgs(s.Name, iso),
	}
	if s.Share != nil {
		steps = append(steps, shareArgs(s.Name, s.Share.HostDir, s.Share.Writable))
	}
	for _, args := range steps {
		if _, err := d.v.runUnlocked(ctx, args...); err != nil {
			return fmt.Errorf("set up %s: %w", s.Name, err)
		}
	}
	b, _ := json.Marshal(machineRecord{Template: tpl, SSHPort: port})
	if err := os.WriteFile(filepath.Join(s.Dir, machineFile), b, 0o600); err != nil {
		return err
	}
	return d.updateClones(tpl, func(c []string) []string { return append(c, s.Name) })
}

// ensureTemplate imports the OVA as a template with its base snapshot,
// unless that is done already. The caller holds the registry lock.
func (d *Driver) ensureTemplate(ctx context.Context, ova string) (string, error) {
	tpl := templateName(ova)
	out, err := d.v.runUnlocked(ctx, listVMsArgs()...)
	if err != nil {
		return "", err
	}
	if !parseVMList(out)[tpl] {
		if users := d.clones(tpl); len(users) > 0 {
			return "", fmt.Errorf("template %s was removed behind fleet's back while %s still use it: destroy them (fleet destroy --force) and spawn again", tpl, strings.Join(users, ", "))
		}
		d.Log.Info("importing template", "ova", ova, "template", tpl)
		if _, err := d.v.runUnlocked(ctx, importArgs(ova, tpl, filepath.Join(d.Home, layout.VirtualBoxTemplates))...); err != nil {
			// An import that failed half way may have registered the VM.
			if _, uerr := d.v.runUnlocked(context.Background(), unregisterArgs(tpl)...); uerr != nil && !notFound(uerr) {
				d.Log.Warn("could not unregister a half-imported template", "template", tpl, "error", uerr)
			}
			return "", fmt.Errorf("import %s: %w", filepath.Base(ova), err)
		}
	}
	snaps, err := d.v.runUnlocked(ctx, listSnapshotsArgs(tpl)...)
	if err != nil && !strings.Contains(err.Error(), "does not have any snapshots") {
		return "", err
	}
	if !strings.Contains(snaps, `SnapshotName="`+BaseSnapshot+`"`) {
		if _, err := d.v.runUnlocked(ctx, takeSnapshotArgs(tpl)...); err != nil {
			return "", fmt.Errorf("snapshot template %s: %w", tpl, err)
		}
	}
	return tpl, nil
}

// Start boots the clone headless.
func (d *Driver) Start(ctx context.Context, s vm.Spec) (vm.Runtime, error) {
	rec, err := d.record(s.Dir)
	if err != nil {
		return vm.Runtime{}, fmt.Errorf("%s: %w", s.Name, vm.ErrNotCreated)
	}
	rt := vm.Runtime{SSHAddr: fmt.Sprintf("127.0.0.1:%d", rec.SSHPort)}
	if st, err := d.Status(ctx, s); err == nil && st.Power == vm.PowerOn {
		return rt, nil
	}
	if _, err := d.v.run(ctx, startArgs(s.Name)...); err != nil {
		return vm.Runtime{}, fmt.Errorf("start %s: %w", s.Name, explainStart(err))
	}
	return rt, nil
}

// explainStart turns VirtualBox's VT-x conflict codes into the fix.
func explainStart(err error) error {
	for _, k := range kvmHolders {
		if strings.Contains(err.Error(), k.code) {
			return fmt.Errorf("%w\nKVM holds %s, so VirtualBox cannot use it: stop KVM guests, then: %s", err, k.feature, k.fix())
		}
	}
	return err
}

// Status asks VirtualBox for the VM's state.
func (d *Driver) Status(ctx context.Context, s vm.Spec) (vm.Status, error) {
	rec, err := d.record(s.Dir)
	if err != nil {
		return vm.Status{Power: vm.PowerOff}, nil
	}
	out, err := d.v.run(ctx, infoArgs(s.Name)...)
	if notFound(err) {
		return vm.Status{Power: vm.PowerOff}, nil
	}
	if err != nil {
		return vm.Status{}, err
	}
	switch parseMachineReadable(out)["VMState"] {
	case "poweroff", "aborted", "saved", "aborted-saved":
		return vm.Status{Power: vm.PowerOff}, nil
	}
	return vm.Status{Power: vm.PowerOn, Runtime: vm.Runtime{SSHAddr: fmt.Sprintf("127.0.0.1:%d", rec.SSHPort)}}, nil
}

// Stop presses the ACPI power button, waits up to grace, then powers off.
func (d *Driver) Stop(ctx context.Context, s vm.Spec, grace time.Duration) error {
	if st, err := d.Status(ctx, s); err != nil || st.Power == vm.PowerOff {
		return err
	}
	if _, err := d.v.run(ctx, acpiShutdownArgs(s.Name)...); err == nil {
		deadline := time.Now().Add(grace)
		for time.Now().Before(deadline) {
			if st, err := d.Status(ctx, s); err == nil && st.Power == vm.PowerOff {
				return nil
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Second):
			}
		}
	}
	_, err := d.v.run(ctx, powerOffArgs(s.Name)...)
	return err
}

// Delete powers the clone off, unregisters it with its differencing disk,
// and removes its template once no clone uses it.
func (d *Driver) Delete(ctx context.Context, s vm.Spec) error {
	rec, recErr := d.record(s.Dir)
	if recErr == nil {
		if st, _ := d.Status(ctx, s); st.Power == vm.PowerOn {
			if _, err := d.v.run(ctx, powerOffArgs(s.Name)...); err != nil && !notFound(err) {
				return fmt.Errorf("power off %s: %w", s.Name, err)
			}
		}
		unlock, err := d.v.lock(ctx)
		if err != nil {
			return err
		}
		defer unlock()
		if _, err := d.v.runUnlocked(ctx, unregisterArgs(s.Name)...); err != nil && !notFound(err) {
			return fmt.Errorf("delete %s: %w", s.Name, err)
		}
		d.v.runUnlocked(ctx, closeDVDArgs(filepath.Join(s.Dir, layout.SeedFile))...) // best effort: only tidies the media registry
		if err := d.updateClones(rec.Template, func(c []string) []string {
			return slices.DeleteFunc(c, func(n string) bool { return n == s.Name })
		}); err != nil {
			return err
		}
		if len(d.clones(rec.Template)) == 0 {
			if _, err := d.v.runUnlocked(ctx, unregisterArgs(rec.Template)...); err != nil && !notFound(err) {
				return fmt.Errorf("remove template %s: %w", rec.Template, err)
			}
		}
	}
	return os.RemoveAll(s.Dir)
}

// clones lists the machines recorded as using template tpl.
func (d *Driver) clones(tpl string) []string {
	var c []string
	b, err := os.ReadFile(filepath.Join(d.Home, layout.VirtualBoxTemplates, tpl+layout.ClonesSuffix))
	if err == nil {
		_ = json.Unmarshal(b, &c)
	}
	return c
}

// updateClones changes a template's clone list; the caller holds the lock.
func (d *Driver) updateClones(tpl string, f func([]string) []string) error {
	path := filepath.Join(d.Home, layout.VirtualBoxTemplates, tpl+layout.ClonesSuffix)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	c := f(d.clones(tpl))
	if len(c) == 0 {
		err := os.Remove(path)
		if errors.Is(err, os.ErrNotExist) {
			err = nil
		}
		return err
	}
	b, _ := json.Marshal(c)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// freePort picks a free loopback port for the SSH forward. VirtualBox binds
// it only at start, so two spawns could race for it; picking under the
// registry lock narrows that to other programs.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
