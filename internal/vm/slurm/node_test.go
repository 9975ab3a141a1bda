package slurm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/vm"
)

// recordingDriver is the node's driver in these tests: it records the
// spec it is given and runs nothing.
type recordingDriver struct {
	mu      sync.Mutex
	created []vm.Spec
	deleted int
	off     bool
	sshAddr string // where the guest's SSH "listens"
	// failRestore: a Start from a template fails.
	failRestore bool
}

func (r *recordingDriver) Name() string                       { return "fake" }
func (r *recordingDriver) Capabilities() vm.Capabilities      { return vm.Capabilities{} }
func (r *recordingDriver) Validate(ctx context.Context) error { return nil }
func (r *recordingDriver) Create(ctx context.Context, s vm.Spec) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.created = append(r.created, s)
	return nil
}
func (r *recordingDriver) Start(ctx context.Context, s vm.Spec) (vm.Runtime, error) {
	if r.failRestore && s.Template != nil {
		return vm.Runtime{}, errors.New("QEMU exited before it could load the saved state")
	}
	if r.sshAddr == "" {
		return vm.Runtime{SSHAddr: "127.0.0.1:1"}, nil
	}
	return vm.Runtime{SSHAddr: r.sshAddr}, nil
}
func (r *recordingDriver) Stop(ctx context.Context, s vm.Spec, grace time.Duration) error { return nil }
func (r *recordingDriver) Status(ctx context.Context, s vm.Spec) (vm.Status, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.off {
		return vm.Status{Power: vm.PowerOff}, nil
	}
	return vm.Status{Power: vm.PowerOn}, nil
}
func (r *recordingDriver) Delete(ctx context.Context, s vm.Spec) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.deleted++
	return nil
}

func sum(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }

func ask(t *testing.T, dir string, req request) reply {
	t.Helper()
	body, _ := json.Marshal(req)
	var out bytes.Buffer
	if err := call(dir, bytes.NewReader(body), &out); err != nil {
		t.Fatal(err)
	}
	var rep reply
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("reply %q: %v", out.String(), err)
	}
	return rep
}

// A job's process, end to end on one host: it copies the image into the
// node's store and checks it, boots the spec rewritten for its own
// folder, takes a policy push, answers a pull, and leaves nothing of the
// machine when it is stopped.
func TestNodeProcessStartsTheMachineInItsOwnFolderAndLeavesNothing(t *testing.T) {
	root := t.TempDir()
	user, err := userFolder(root)
	if err != nil {
		t.Fatal(err)
	}
	disk := []byte("the image's disk")
	img := filepath.Join(t.TempDir(), "disk.qcow2")
	os.WriteFile(img, disk, 0o644)
	// The guest's sshd, on loopback as QEMU forwards it: an echo.
	guest, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer guest.Close()
	go func() {
		for {
			c, err := guest.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	rd := &recordingDriver{sshAddr: guest.Addr().String()}
	n := &node{dir: filepath.Join(user, layout.NodeJobPrefix+"7"), user: user, done: make(chan string, 1),
		newDriver: func() (vm.Driver, string) { return rd, "tcg" }}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ended := make(chan string, 1)
	go func() { why, _ := n.run(ctx); ended <- why }()

	spec := vm.Spec{Name: "p-1", Dir: "/home/u/.local/share/agentfleet/fleets/p/machines/p-1", BaseImage: img,
		Network: vm.Network{Forwards: []vm.Forward{{GuestPort: 3128, Command: []string{"/usr/bin/fleet", "__proxy", "egress", "/home/u/.local/share/agentfleet/fleets/p/machines/p-1"}}}}}
	rep := ask(t, n.dir, request{Op: "start", Spec: spec, ForwardHost: "127.0.0.1",
		Images: []imageFile{{Path: img, SHA256: sum(disk)}},
		Files:  []nodeFile{{Name: layout.PolicyFile, Data: []byte(`{"mode":"allowlist"}`)}}})
	if rep.Error != "" || !strings.HasPrefix(rep.SSHAddr, "127.0.0.1:") || rep.SSHAddr == guest.Addr().String() || rep.Accel != "tcg" {
		t.Fatalf("start: %+v", rep)
	}
	// The node address's relay reaches the guest's SSH.
	c, err := net.DialTimeout("tcp", rep.SSHAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "SSH-2.0-probe\n")
	c.(*net.TCPConn).CloseWrite()
	if b, _ := io.ReadAll(c); string(b) != "SSH-2.0-probe\n" {
		t.Fatalf("through the relay: %q", b)
	}
	c.Close()
	got := rd.created[0]
	self, _ := os.Executable()
	if got.Dir != n.dir || got.BaseImage != filepath.Join(user, layout.NodeImagesFolder, "sha256-"+sum(disk)) ||
		strings.Join(got.Network.Forwards[0].Command, " ") != self+" __proxy egress "+n.dir {
		t.Fatalf("spec on the node: %+v", got)
	}
	if rep := ask(t, n.dir, request{Op: "start", Spec: spec}); !strings.Contains(rep.Error, "started already") {
		t.Errorf("a second start: %+v", rep)
	}
	if rep := ask(t, n.dir, request{Op: "push", Files: []nodeFile{{Name: layout.PolicyFile, Data: []byte("v2")}}}); rep.Error != "" {
		t.Fatal(rep.Error)
	}
	if b, _ := os.ReadFile(filepath.Join(n.dir, layout.PolicyFile)); string(b) != "v2" {
		t.Errorf("policy on the node: %q", b)
	}
	os.WriteFile(filepath.Join(n.dir, layout.AuditFile), []byte("audit line\n"), 0o600)
	if rep := ask(t, n.dir, request{Op: "pull", Names: []string{layout.AuditFile, layout.UsageFile}}); rep.Error != "" || len(rep.Files) != 1 || string(rep.Files[0].Data) != "audit line\n" {
		t.Errorf("pull: %+v", rep)
	}
	for _, bad := range []string{"../x", ".hidden", "a/b", "", strings.Repeat("a", 100), "ctl.sock\x00"} {
		if rep := ask(t, n.dir, request{Op: "push", Files: []nodeFile{{Name: bad, Data: []byte("x")}}}); rep.Error == "" {
			t.Errorf("push of %q was taken", bad)
		}
	}
	if rep := ask(t, n.dir, request{Op: "stop"}); rep.Error != "" {
		t.Fatal(rep.Error)
	}
	select {
	case why := <-ended:
		if why != "stopped by fleet" {
			t.Errorf("ended: %q", why)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the job's process did not end")
	}
	if _, err := os.Stat(n.dir); !os.IsNotExist(err) {
		t.Errorf("the machine folder is left: %v", err)
	}
	if _, err := net.DialTimeout("tcp", rep.SSHAddr, time.Second); err == nil {
		t.Error("the relay outlived the job")
	}
	if rd.deleted != 1 {
		t.Errorf("the machine was deleted %d times", rd.deleted)
	}
	// The image stays in the user's store for the next job.
	if _, err := os.Stat(got.BaseImage); err != nil {
		t.Error(err)
	}
}

func TestNodeProcessEndsWhenTheHypervisorDoes(t *testing.T) {
	user, _ := userFolder(t.TempDir())
	img := filepath.Join(t.TempDir(), "d")
	os.WriteFile(img, []byte("d"), 0o644)
	rd := &recordingDriver{}
	n := &node{dir: filepath.Join(user, "job-8"), user: user, done: make(chan string, 1),
		newDriver: func() (vm.Driver, string) { return rd, "kvm" }}
	ended := make(chan string, 1)
	go func() { why, _ := n.run(context.Background()); ended <- why }()
	ask(t, n.dir, request{Op: "start", Spec: vm.Spec{Dir: "/c", BaseImage: img}, ForwardHost: "127.0.0.1", Images: []imageFile{{Path: img, SHA256: sum([]byte("d"))}}})
	rd.mu.Lock()
	rd.off = true
	rd.mu.Unlock()
	select {
	case why := <-ended:
		if !strings.Contains(why, "hypervisor exited") {
			t.Errorf("ended: %q", why)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the job outlived its machine")
	}
}

func TestStartRefusesWhatTheNodeCannotCheck(t *testing.T) {
	user, _ := userFolder(t.TempDir())
	img := filepath.Join(t.TempDir(), "d")
	os.WriteFile(img, []byte("the real disk"), 0o644)
	for name, req := range map[string]request{
		"a digest that does not match": {Spec: vm.Spec{BaseImage: img}, ForwardHost: "10.0.0.1", Images: []imageFile{{Path: img, SHA256: sum([]byte("another disk"))}}},
		"an image without a digest":    {Spec: vm.Spec{BaseImage: img}, ForwardHost: "10.0.0.1"},
		"a digest that is not sha256":  {Spec: vm.Spec{BaseImage: img}, ForwardHost: "10.0.0.1", Images: []imageFile{{Path: img, SHA256: "../../etc"}}},
		"a shared folder":              {Spec: vm.Spec{BaseImage: img, Share: &vm.Share{HostDir: "/"}}, ForwardHost: "10.0.0.1"},
		"a forward address that is not an IP": {Spec: vm.Spec{BaseImage: img}, ForwardHost: "0.0.0.0 -x",
			Images: []imageFile{{Path: img, SHA256: sum([]byte("the real disk"))}}},
		"a kernel without a digest": {Spec: vm.Spec{BaseImage: img, Boot: &vm.DirectBoot{Kernel: "/boot/vmlinuz"}}, ForwardHost: "10.0.0.1",
			Images: []imageFile{{Path: img, SHA256: sum([]byte("the real disk"))}}},
	} {
		rd := &recordingDriver{}
		n := &node{dir: t.TempDir(), user: user, newDriver: func() (vm.Driver, string) { return rd, "kvm" }}
		if _, err := n.start(context.Background(), req); err == nil {
			t.Errorf("%s: started", name)
		}
		if len(rd.created) != 0 {
			t.Errorf("%s: a machine was created", name)
		}
	}
	// Nothing that failed its check is kept in the store: only the real
	// disk, copied for the case that failed on its kernel.
	left, _ := filepath.Glob(filepath.Join(user, layout.NodeImagesFolder, "*"))
	if len(left) != 1 || filepath.Base(left[0]) != "sha256-"+sum([]byte("the real disk")) {
		t.Errorf("store holds %v", left)
	}
}

func TestUserFolderRefusesOneSomeoneElsePlanted(t *testing.T) {
	root := t.TempDir()
	// A link in our name, planted before our first job.
	target := t.TempDir()
	if err := os.Symlink(target, root+"-u"+strconv.Itoa(os.Getuid())); err != nil {
		t.Fatal(err)
	}
	if _, err := userFolder(root); err == nil {
		t.Fatal("a planted link was taken as the user's folder")
	}
	if _, err := userFolder("relative/path"); err == nil {
		t.Fatal("a relative node folder was taken")
	}
	// Our own folder, made too open, is closed again.
	root2 := t.TempDir()
	os.Mkdir(root2+"-u"+strconv.Itoa(os.Getuid()), 0o777)
	dir, err := userFolder(root2)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Errorf("mode %v", st.Mode().Perm())
	}
}

func TestUserFolderRefusesAFolderAboveItOthersCouldReplace(t *testing.T) {
	// Others may write it, and it is not sticky: they could rename ours.
	open := filepath.Join(t.TempDir(), "open")
	os.Mkdir(open, 0o777)
	os.Chmod(open, 0o777)
	if _, err := userFolder(filepath.Join(open, "fleet")); err == nil || !strings.Contains(err.Error(), "not sticky") {
		t.Fatalf("a non-sticky shared parent: %v", err)
	}
	// Sticky, like /var/tmp: fine.
	os.Chmod(open, 0o777|os.ModeSticky)
	if _, err := userFolder(filepath.Join(open, "fleet")); err != nil {
		t.Fatal(err)
	}
	if os.Getuid() != 0 {
		t.Skip("needs root to make a folder of another user's")
	}
	theirs := filepath.Join(t.TempDir(), "theirs")
	os.Mkdir(theirs, 0o755)
	os.Chown(theirs, 12345, 12345)
	if _, err := userFolder(filepath.Join(theirs, "fleet")); err == nil || !strings.Contains(err.Error(), "another user") {
		t.Fatalf("a parent of another user's: %v", err)
	}
}

func TestExpandRootNamesTheNode(t *testing.T) {
	t.Setenv("SLURMD_NODENAME", "gpu07")
	if got := expandRoot("/scratch/%n/fleet"); got != "/scratch/gpu07/fleet" {
		t.Errorf("got %s", got)
	}
	if got := expandRoot(""); got != DefaultNodeRoot {
		t.Errorf("default %s", got)
	}
}

// fakeWarm is a node's template store in these tests.
type fakeWarm struct {
	mu          sync.Mutex
	asked       []bool // mayMake of each Template call
	store       string
	tplErr      error
	identifyErr error
	identified  []string // hostnames given
	forgot      []vm.Template
	prebuilds   map[string]bool // keys the node holds
	saved       []string        // keys SavePrebuild was asked for
	savedSpec   vm.Spec
}

func (f *fakeWarm) Prebuild(ctx context.Context, d vm.Driver, store string, s vm.Spec) (vm.Template, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.prebuilds[s.HostPrebuild] {
		return vm.Template{}, errors.New("no prebuild of this project on this node")
	}
	return vm.Template{Disk: filepath.Join(store, "p", "disk.qcow2"), Memory: filepath.Join(store, "p", "memory"), State: filepath.Join(store, "p", "state")}, nil
}

func (f *fakeWarm) SavePrebuild(ctx context.Context, d vm.Driver, store string, s vm.Spec, key string, info vm.PrebuildInfo) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.saved, f.savedSpec = append(f.saved, key), s
	if f.prebuilds == nil {
		f.prebuilds = map[string]bool{}
	}
	f.prebuilds[key] = true
	return 3 << 20, nil
}

func (f *fakeWarm) Forget(ctx context.Context, t vm.Template) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.forgot = append(f.forgot, t)
	return nil
}

func (f *fakeWarm) Template(ctx context.Context, d vm.Driver, store string, s vm.Spec, mayMake bool) (vm.Template, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked, f.store = append(f.asked, mayMake), store
	if f.tplErr != nil {
		return vm.Template{}, f.tplErr
	}
	return vm.Template{Disk: filepath.Join(store, "t", "disk.qcow2"), Memory: filepath.Join(store, "t", "memory"), State: filepath.Join(store, "t", "state")}, nil
}

func (f *fakeWarm) Identify(ctx context.Context, d vm.Driver, s vm.Spec) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.identified = append(f.identified, s.Seed.Hostname)
	return f.identifyErr
}

// The controller's HostWarm decides: off boots, existing and make ask
// the node's store (make may build), and a restored machine gets its
// seed's identity before the start is answered. A store that has no
// template boots the machine and says why; an identity that fails fails
// the start.
func TestNodeStartRestoresFromTheNodesTemplateWhenAsked(t *testing.T) {
	user, _ := userFolder(t.TempDir())
	disk := []byte("the image's disk")
	img := filepath.Join(t.TempDir(), "disk.qcow2")
	os.WriteFile(img, disk, 0o644)
	start := func(hw vm.HostWarm, w NodeWarm) (*recordingDriver, reply, error) {
		rd := &recordingDriver{}
		n := &node{dir: t.TempDir(), user: user, warm: w, newDriver: func() (vm.Driver, string) { return rd, "kvm" }}
		rep, err := n.start(context.Background(), request{Spec: vm.Spec{Name: "p-1", BaseImage: img, BaseImageSHA256: sum(disk), HostWarm: hw,
			Seed: vm.Seed{Hostname: "p-1"}}, ForwardHost: "127.0.0.1", Images: []imageFile{{Path: img, SHA256: sum(disk)}}})
		if n.relay != nil {
			n.relay.Close()
		}
		return rd, rep, err
	}

	w := &fakeWarm{}
	rd, rep, err := start(vm.HostWarmOff, w)
	// The first start on this node copies the image in, and says so.
	if err != nil || len(w.asked) != 0 || rd.created[0].Template != nil || !strings.HasPrefix(rep.Note, "image files disk.qcow2 (0 MiB) copied from the shared path in ") {
		t.Fatalf("off: err %v, asked %v, template %v, note %q", err, w.asked, rd.created[0].Template, rep.Note)
	}

	for _, hw := range []vm.HostWarm{vm.HostWarmExisting, vm.HostWarmMake} {
		w := &fakeWarm{}
		rd, rep, err := start(hw, w)
		if err != nil {
			t.Fatal(err)
		}
		if len(w.asked) != 1 || w.asked[0] != (hw == vm.HostWarmMake) || w.store != filepath.Join(user, layout.NodeTemplatesFolder) {
			t.Errorf("%d: asked %v in %s", hw, w.asked, w.store)
		}
		if tp := rd.created[0].Template; tp == nil || !strings.HasPrefix(tp.Disk, w.store) {
			t.Errorf("%d: created with template %v", hw, tp)
		}
		if len(w.identified) != 1 || w.identified[0] != "p-1" || !strings.Contains(rep.Note, "warm template") {
			t.Errorf("%d: identified %v, note %q", hw, w.identified, rep.Note)
		}
	}

	w = &fakeWarm{tplErr: errors.New("none of this shape yet")}
	rd, rep, err = start(vm.HostWarmExisting, w)
	if err != nil || rd.created[0].Template != nil || len(w.identified) != 0 || !strings.Contains(rep.Note, "booted: no warm template on this node: none of this shape yet") {
		t.Fatalf("no template: err %v, template %v, identified %v, note %q", err, rd.created[0].Template, w.identified, rep.Note)
	}

	// A failed identity fails the start, and the machine that would
	// have answered as the template is deleted.
	w = &fakeWarm{identifyErr: errors.New("guest agent: no answer")}
	if rd, _, err := start(vm.HostWarmMake, w); err == nil || !strings.Contains(err.Error(), "guest agent: no answer") || rd.deleted != 1 {
		t.Fatalf("a failed identity: %v (deleted %d)", err, rd.deleted)
	}

	// A template that does not restore is forgotten, and the machine
	// boots its image instead.
	w = &fakeWarm{}
	rd = &recordingDriver{failRestore: true}
	n := &node{dir: t.TempDir(), user: user, warm: w, newDriver: func() (vm.Driver, string) { return rd, "kvm" }}
	rep, err = n.start(context.Background(), request{Spec: vm.Spec{Name: "p-1", BaseImage: img, BaseImageSHA256: sum(disk), HostWarm: vm.HostWarmMake},
		ForwardHost: "127.0.0.1", Images: []imageFile{{Path: img, SHA256: sum(disk)}}})
	if n.relay != nil {
		n.relay.Close()
	}
	if err != nil || len(w.forgot) != 1 || len(rd.created) != 2 || rd.created[1].Template != nil || rd.deleted != 1 ||
		!strings.Contains(rep.Note, "did not restore") {
		t.Fatalf("a template that does not restore: err %v, forgot %v, created %d, deleted %d, note %q", err, w.forgot, len(rd.created), rd.deleted, rep.Note)
	}

	// A fleet binary without a store boots, and says so.
	rd, rep, err = start(vm.HostWarmMake, nil)
	if err != nil || rd.created[0].Template != nil || !strings.Contains(rep.Note, "booted") {
		t.Fatalf("no store: err %v, note %q", err, rep.Note)
	}
}

// A start asking for the project's prebuild restores it where the node
// holds one, and says so (the controller then skips the setup); a node
// without it restores the warm template and says the machine runs the
// setup. save-prebuild saves only a started machine restored from the
// node's template, with a key of bounded size.
func TestNodeRestoresTheProjectsPrebuildWhereItHoldsOne(t *testing.T) {
	user, _ := userFolder(t.TempDir())
	disk := []byte("the image's disk")
	img := filepath.Join(t.TempDir(), "disk.qcow2")
	os.WriteFile(img, disk, 0o644)
	w := &fakeWarm{}
	start := func(hw vm.HostWarm, key string) (*node, *recordingDriver, reply, error) {
		rd := &recordingDriver{}
		n := &node{dir: t.TempDir(), user: user, warm: w, newDriver: func() (vm.Driver, string) { return rd, "kvm" }}
		rep, err := n.start(context.Background(), request{Spec: vm.Spec{Name: "p-1", BaseImage: img, BaseImageSHA256: sum(disk), HostWarm: hw, HostPrebuild: key,
			Seed: vm.Seed{Hostname: "p-1"}}, ForwardHost: "127.0.0.1", Images: []imageFile{{Path: img, SHA256: sum(disk)}}})
		if n.relay != nil {
			n.relay.Close()
		}
		return n, rd, rep, err
	}
	save := func(n *node, p *prebuildSave) (string, error) { return n.savePrebuild(context.Background(), p) }

	// None yet: the warm template, and the setup runs in the machine.
	n, rd, rep, err := start(vm.HostWarmMake, "k1")
	if err != nil || rep.Prebuilt || !strings.HasPrefix(rd.created[0].Template.Disk, filepath.Join(user, layout.NodeTemplatesFolder, "t")) ||
		!regexp.MustCompile(`^from this node's warm template, restored and given its identity in \S+; no prebuild of this project on this node, so the machine runs the setup`).MatchString(rep.Note) {
		t.Fatalf("no prebuild: %v %+v %q", err, rd.created[0].Template, rep.Note)
	}
	// The controller set it up: saved under its key, from the spec the
	// node restored.
	for _, bad := range []*prebuildSave{nil, {Key: ""}, {Key: strings.Repeat("k", maxKeySize+1)}} {
		if _, err := save(n, bad); err == nil {
			t.Errorf("save-prebuild %+v was taken", bad)
		}
	}
	note, err := save(n, &prebuildSave{Key: "k1", Info: vm.PrebuildInfo{Project: "p", Setup: []string{"npm ci"}}})
	if err != nil || !strings.HasPrefix(note, "saved as this node's prebuild of the project (3 MiB) in ") || len(w.saved) != 1 ||
		w.savedSpec.Template == nil || w.savedSpec.HostPrebuild != "" {
		t.Fatalf("save: %v %q %v %+v", err, note, w.saved, w.savedSpec)
	}
	// The next start asking for it restores it, identified as itself;
	// that machine is no base for another prebuild.
	pn, rd, rep, err := start(vm.HostWarmExisting, "k1")
	if _, serr := save(pn, &prebuildSave{Key: "k9"}); serr == nil || !strings.Contains(serr.Error(), "restored from a prebuild") {
		t.Errorf("a machine restored from a prebuild was saved as one: %v", serr)
	}
	if err != nil || !rep.Prebuilt || !strings.HasPrefix(rd.created[0].Template.Disk, filepath.Join(user, layout.NodeTemplatesFolder, "p")) ||
		!strings.HasPrefix(rep.Note, "from this node's prebuild of the project (setup skipped), restored and given its identity in ") || w.identified[len(w.identified)-1] != "p-1" {
		t.Fatalf("prebuilt: %v %+v %q", err, rd.created[0].Template, rep.Note)
	}
	// A key past the bound is not looked up: the warm template, and setup.
	if _, _, rep, err := start(vm.HostWarmExisting, strings.Repeat("k", maxKeySize+1)); err != nil || rep.Prebuilt || !strings.Contains(rep.Note, "from this node's warm template") || !strings.Contains(rep.Note, "too long, so the machine runs the setup") {
		t.Fatalf("a long key: %v %+v", err, rep)
	}
	// Another key, or HostWarm off, does not.
	if _, _, rep, err := start(vm.HostWarmExisting, "k2"); err != nil || rep.Prebuilt {
		t.Fatalf("another key: %v %+v", err, rep)
	}
	if _, rd, rep, err := start(vm.HostWarmOff, "k1"); err != nil || rep.Prebuilt || rd.created[0].Template != nil {
		t.Fatalf("cold: %v %+v", err, rep)
	}
	// A booted machine, or one not started, is never saved.
	booted, _, _, _ := start(vm.HostWarmOff, "")
	if _, err := save(booted, &prebuildSave{Key: "k3"}); err == nil || !strings.Contains(err.Error(), "booted") {
		t.Fatalf("a booted machine saved: %v", err)
	}
	idle := &node{dir: t.TempDir(), user: user, warm: w}
	if _, err := save(idle, &prebuildSave{Key: "k3"}); err == nil || !strings.Contains(err.Error(), "has not started") {
		t.Fatalf("a job without a machine saved: %v", err)
	}
}

// A node without the image on its shared path pulls each file from the
// fleet's registry by its digest, once for the jobs starting together,
// and keeps nothing the registry got wrong.
func TestStartPullsAnImageTheNodeLacksFromTheRegistry(t *testing.T) {
	old := copyStall
	copyStall = 200 * time.Millisecond
	defer func() { copyStall = old }()
	disk := []byte("the real disk, pushed")
	missing := filepath.Join(t.TempDir(), "not-on-this-node", "disk.qcow2")
	reg := &ImageRegistry{Ref: "registry.example:5000/fleet/debian-12"}
	var mu sync.Mutex
	opened := 0
	serve := func(content []byte) BlobOpener {
		return func(ctx context.Context, r ImageRegistry, digest string, size int64) (io.ReadCloser, error) {
			mu.Lock()
			opened++
			mu.Unlock()
			if r != *reg || digest != sum(disk) || size != int64(len(disk)) {
				return nil, fmt.Errorf("asked for %+v %s %d", r, digest, size)
			}
			time.Sleep(50 * time.Millisecond) // long enough for the other job to wait
			return io.NopCloser(bytes.NewReader(content)), nil
		}
	}
	req := request{Op: "start", Spec: vm.Spec{Dir: "/c", BaseImage: missing}, ForwardHost: "127.0.0.1", Registry: reg,
		Images: []imageFile{{Path: missing, SHA256: sum(disk), Size: int64(len(disk))}}}

	t.Run("two jobs on one node pull it once", func(t *testing.T) {
		user, _ := userFolder(t.TempDir())
		opened = 0
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rd := &recordingDriver{}
				n := &node{dir: t.TempDir(), user: user, blobs: serve(disk), newDriver: func() (vm.Driver, string) { return rd, "kvm" }}
				_, errs[i] = n.start(context.Background(), req)
				if errs[i] == nil && rd.created[0].BaseImage != filepath.Join(user, layout.NodeImagesFolder, "sha256-"+sum(disk)) {
					errs[i] = fmt.Errorf("booted %s", rd.created[0].BaseImage)
				}
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if opened != 1 {
			t.Errorf("the registry was asked %d times", opened)
		}
		if b, _ := os.ReadFile(filepath.Join(user, layout.NodeImagesFolder, "sha256-"+sum(disk))); !bytes.Equal(b, disk) {
			t.Errorf("stored %q", b)
		}
	})

	for name, tc := range map[string]struct {
		blobs BlobOpener
		reg   *ImageRegistry
		want  string
	}{
		"a registry that serves other bytes": {serve([]byte("the real disk, swapped")), reg, "not used"},
		"a registry that serves more bytes":  {serve(append(append([]byte{}, disk...), "and more"...)), reg, "not used"},
		"a registry that serves fewer bytes": {serve(disk[:5]), reg, "not used"},
		"a registry that fails": {func(context.Context, ImageRegistry, string, int64) (io.ReadCloser, error) {
			return nil, errors.New("registry.example:5000 has no blob")
		}, reg, "pulling it from registry.example:5000/fleet/debian-12 failed: registry.example:5000 has no blob"},
		"no registry named": {serve(disk), nil, "names no image_registry"},
		"a registry that stops sending": {func(ctx context.Context, _ ImageRegistry, _ string, _ int64) (io.ReadCloser, error) {
			return io.NopCloser(io.MultiReader(bytes.NewReader(disk[:4]), &blockUntil{ctx})), nil
		}, reg, "nothing came for 200ms"},
	} {
		t.Run(name, func(t *testing.T) {
			user, _ := userFolder(t.TempDir())
			rd := &recordingDriver{}
			n := &node{dir: t.TempDir(), user: user, blobs: tc.blobs, newDriver: func() (vm.Driver, string) { return rd, "kvm" }}
			r := req
			r.Registry = tc.reg
			_, err := n.start(context.Background(), r)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("start: %v, want %q", err, tc.want)
			}
			if len(rd.created) != 0 {
				t.Error("a machine was created")
			}
			if left, _ := filepath.Glob(filepath.Join(user, layout.NodeImagesFolder, "*")); len(left) != 0 {
				t.Errorf("the store keeps %v", left)
			}
		})
	}
}

// blockUntil reads nothing until its context ends, as a stalled registry.
type blockUntil struct{ ctx context.Context }

func (b *blockUntil) Read([]byte) (int, error) {
	<-b.ctx.Done()
	return 0, b.ctx.Err()
}
