package virtualbox

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/sshx"
	"github.com/agentfleet/agentfleet/internal/vm"
	"github.com/agentfleet/agentfleet/internal/vm/virtualbox/vboxtest"
	"github.com/agentfleet/agentfleet/internal/vm/vmtest"
	"golang.org/x/crypto/ssh"
)

// fakeBin is the strict fake VBoxManage.
var fakeBin string

// fake is one isolated VirtualBox installation: its registry, the PATH that
// finds the fake, and a driver using them.
type fake struct {
	t      *testing.T
	home   string // FAKE_VBOX_HOME
	env    []string
	driver *Driver
	ova    string
}

func newFake(t *testing.T, env ...string) *fake {
	fakeBin = vboxtest.Fake(t)
	f := &fake{t: t, home: t.TempDir()}
	f.env = append([]string{"FAKE_VBOX_HOME=" + f.home, "FAKE_VBOX_GUEST=1"}, env...)
	f.driver = New(envRunner{env: f.env}, filepath.Join(t.TempDir(), "virtualbox"), nil)
	f.driver.v.bin = fakeBin
	f.driver.v.backoff = 10 * time.Millisecond
	f.ova = vboxtest.WriteOVA(t, filepath.Join(t.TempDir(), "debian-12-v1.ova"))
	t.Cleanup(func() {
		// Whatever a test left running: fake guests are real processes.
		for n := range parseVMList(f.vbox("list", "vms")) {
			f.vbox("controlvm", n, "poweroff")
		}
	})
	return f
}

// envRunner runs commands with the fake's environment.
type envRunner struct{ env []string }

func (r envRunner) Run(ctx context.Context, c execx.Cmd) ([]byte, error) {
	c.Env = append(c.Env, r.env...)
	return execx.Local{}.Run(ctx, c)
}

// vbox calls the fake directly, as a user at a shell would.
func (f *fake) vbox(args ...string) string {
	cmd := exec.Command(fakeBin, args...)
	cmd.Env = append(os.Environ(), f.env...)
	out, _ := cmd.CombinedOutput()
	return string(out)
}

func (f *fake) registered() []string {
	var names []string
	for n := range parseVMList(f.vbox("list", "vms")) {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

var clientKey, _ = sshx.NewKeyPair("test")

func (f *fake) spec(name string) vm.Spec {
	hk, err := sshx.NewKeyPair("")
	if err != nil {
		f.t.Fatal(err)
	}
	return vm.Spec{Name: name, Dir: filepath.Join(f.t.TempDir(), name), BaseImage: f.ova, CPUs: 2, MemoryMiB: 2048,
		Seed: vm.Seed{InstanceID: "i-" + name, Hostname: name, User: "agent", AuthorizedKey: clientKey.AuthorizedKey,
			HostKeyPrivate: string(hk.PrivatePEM), HostKeyPublic: hk.AuthorizedKey}}
}

func TestConformanceOverTheFake(t *testing.T) {
	f := newFake(t)
	vmtest.Run(t, vmtest.Harness{
		Driver: f.driver, Spec: func(t *testing.T, name string) vm.Spec { return f.spec(name) },
		ClientKey: clientKey, User: "agent", BootTimeout: 20 * time.Second,
	})
	if got := f.registered(); len(got) != 0 {
		t.Errorf("after the last delete, still registered: %v (the template must go with its last clone)", got)
	}
}

// call is one VBoxManage invocation from the fake's log.
type call struct {
	start, end time.Time
	args       []string
}

func (f *fake) calls() []call {
	fh, err := os.Open(filepath.Join(f.home, "calls.log"))
	if err != nil {
		return nil
	}
	defer fh.Close()
	var out []call
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		p := strings.SplitN(sc.Text(), " ", 4)
		s, _ := strconv.ParseInt(p[0], 10, 64)
		e, _ := strconv.ParseInt(p[1], 10, 64)
		out = append(out, call{time.Unix(0, s), time.Unix(0, e), strings.Fields(p[3])})
	}
	return out
}

func overlap(a, b call) bool { return a.start.Before(b.end) && b.start.Before(a.end) }

func TestEightParallelClonesNeverCollideAndBootTogether(t *testing.T) {
	f := newFake(t, "FAKE_VBOX_BOOT_MS=1000")
	ctx := context.Background()
	signer, _ := sshParse(clientKey.PrivatePEM)
	specs := make([]vm.Spec, 8)
	boots := make([]call, 8) // from startvm to the SSH handshake
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range specs {
		specs[i] = f.spec(fmt.Sprintf("p-%d", i+1))
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := specs[i]
			if errs[i] = f.driver.Create(ctx, s); errs[i] != nil {
				return
			}
			boots[i].start = time.Now()
			rt, err := f.driver.Start(ctx, s)
			if errs[i] = err; err != nil {
				return
			}
			// Every machine answers SSH with its own pinned key.
			hk, _ := sshx.ParseAuthorizedKey(s.Seed.HostKeyPublic)
			wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			c, err := sshx.WaitReady(wctx, sshx.Target{Addr: rt.SSHAddr, User: "agent", Signer: signer, HostKey: hk}, sshx.Backoff{Initial: 50 * time.Millisecond, Max: 200 * time.Millisecond})
			if errs[i] = err; err == nil {
				c.Close()
			}
			boots[i].end = time.Now()
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("p-%d: %v", i+1, err)
		}
	}
	var registry []call
	imports := 0
	for _, c := range f.calls() {
		if registryCommands[c.args[0]] && !(c.args[0] == "snapshot" && c.args[2] == "list") {
			registry = append(registry, c)
		}
		if c.args[0] == "import" {
			imports++
		}
	}
	for i, a := range registry {
		for _, b := range registry[i+1:] {
			if overlap(a, b) {
				t.Errorf("registry calls overlapped: %v and %v", a.args, b.args)
			}
		}
	}
	if imports != 1 {
		t.Errorf("the OVA was imported %d times, want once", imports)
	}
	overlapping := 0
	for i, a := range boots {
		for _, b := range boots[i+1:] {
			if overlap(a, b) {
				overlapping++
			}
		}
	}
	if overlapping < 7 {
		t.Errorf("only %d pairs of boots overlapped: boots must run in parallel", overlapping)
	}
	for _, s := range specs {
		if err := f.driver.Delete(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	if got := f.registered(); len(got) != 0 {
		t.Errorf("left registered: %v", got)
	}
}

func TestTheFakeIsStrict(t *testing.T) {
	f := newFake(t)
	tpl := "tpl"
	out := f.vbox("import", f.ova, "--vsys", "0", "--vmname", tpl, "--basefolder", t.TempDir())
	if !strings.Contains(out, "Successfully imported the appliance.") {
		t.Fatal(out)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"clonevm", tpl, "--options", "link", "--name", "c", "--register"}, "Linked clone requires a snapshot"},
		{[]string{"clonevm", "ghost", "--snapshot", BaseSnapshot, "--options", "link", "--name", "c", "--register"}, "Could not find a registered machine named 'ghost'"},
		{[]string{"clonevm", tpl, "--snapshot", "nope", "--options", "link", "--name", "c", "--register"}, "Could not find a snapshot named 'nope'"},
		{[]string{"modifyvm", tpl, "--audio", "none"}, "Unknown option: --audio"},
		{[]string{"modifyvm", tpl, "--nat-pf1", "ssh,tcp,127.0.0.1,22"}, "Invalid NAT port-forwarding rule"},
		{[]string{"storageattach", tpl, "--storagectl", "SATA", "--port", "0", "--device", "0", "--type", "dvddrive", "--medium", "/x.iso"}, "Could not find a controller named 'SATA'"},
		{[]string{"controlvm", tpl, "poweroff"}, "is not currently running"},
		{[]string{"frobnicate"}, "Invalid command 'frobnicate'"},
	} {
		if out := f.vbox(c.args...); !strings.Contains(out, c.want) {
			t.Errorf("VBoxManage %v: %q, want %q", c.args, out, c.want)
		}
	}
	f.vbox("snapshot", tpl, "take", BaseSnapshot)
	f.vbox("clonevm", tpl, "--snapshot", BaseSnapshot, "--options", "link", "--name", "c1", "--basefolder", t.TempDir(), "--register")
	if out := f.vbox("unregistervm", tpl, "--delete"); !strings.Contains(out, "cannot be closed because it has 1 child media") {
		t.Errorf("deleting a template with a linked clone: %q", out)
	}

	// Two registry changes at once: one of them gets VirtualBox's lock error.
	var wg sync.WaitGroup
	outs := make([]string, 6)
	for i := range outs {
		wg.Add(1)
		go func() { defer wg.Done(); outs[i] = f.vbox("modifyvm", "c1", "--cpus", strconv.Itoa(i+1)) }()
	}
	wg.Wait()
	if !slices.ContainsFunc(outs, func(s string) bool { return strings.Contains(s, "already locked") }) {
		t.Errorf("six concurrent modifyvm calls: no lock error: %q", outs)
	}
}

func TestVBoxManageErrorsAtExitZeroAreErrors(t *testing.T) {
	f := newFake(t, "FAKE_VBOX_FAULTS=startvm-exit0")
	s := f.spec("z-1")
	ctx := context.Background()
	if err := f.driver.Create(ctx, s); err != nil {
		t.Fatal(err)
	}
	_, err := f.driver.Start(ctx, s)
	if err == nil || !strings.Contains(err.Error(), "terminated unexpectedly during startup") {
		t.Fatalf("startvm printed an error and exited 0: got %v", err)
	}
}

func TestKVMHoldingVTxIsExplained(t *testing.T) {
	f := newFake(t, "FAKE_VBOX_FAULTS=vtx")
	s := f.spec("k-1")
	ctx := context.Background()
	if err := f.driver.Create(ctx, s); err != nil {
		t.Fatal(err)
	}
	if _, err := f.driver.Start(ctx, s); err == nil || !strings.Contains(err.Error(), "sudo modprobe -r kvm_intel") {
		t.Fatalf("got %v", err)
	}
}

func TestObjectNotReadyIsRetried(t *testing.T) {
	f := newFake(t, "FAKE_VBOX_FAULTS=not-ready=2")
	s := f.spec("r-1")
	ctx := context.Background()
	if err := f.driver.Create(ctx, s); err != nil {
		t.Fatal(err)
	}
	if st, err := f.driver.Status(ctx, s); err != nil || st.Power != vm.PowerOff {
		t.Fatalf("status after two 'not ready' answers: %v %v", st, err)
	}
}

func TestBadInputLeavesNothingRegistered(t *testing.T) {
	ctx := context.Background()
	t.Run("VBoxManage missing", func(t *testing.T) {
		f := newFake(t)
		f.driver.v.bin = filepath.Join(t.TempDir(), "VBoxManage") // not there
		if err := f.driver.Validate(ctx); err == nil || !strings.Contains(err.Error(), "VBoxManage is not installed") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("an OVA that fails to import", func(t *testing.T) {
		f := newFake(t)
		bad := filepath.Join(t.TempDir(), "broken.ova")
		os.WriteFile(bad, []byte("not a tar"), 0o644)
		s := f.spec("b-1")
		s.BaseImage = bad
		err := f.driver.Create(ctx, s)
		if err == nil || !strings.Contains(err.Error(), "import broken.ova") || !strings.Contains(err.Error(), "Appliance read failed") {
			t.Errorf("got %v", err)
		}
		if got := f.registered(); len(got) != 0 {
			t.Errorf("half-registered after a failed import: %v", got)
		}
	})
	t.Run("a template deleted behind the tool's back", func(t *testing.T) {
		f := newFake(t)
		first := f.spec("d-1")
		if err := f.driver.Create(ctx, first); err != nil {
			t.Fatal(err)
		}
		tpl := templateName(f.ova)
		f.vbox("unregistervm", tpl) // without --delete: VirtualBox allows it
		err := f.driver.Create(ctx, f.spec("d-2"))
		if err == nil || !strings.Contains(err.Error(), "removed behind fleet's back while d-1 still use it") {
			t.Errorf("got %v", err)
		}
		if got := f.registered(); !slices.Equal(got, []string{"d-1"}) {
			t.Errorf("registered: %v, want only d-1", got)
		}
		if _, err := f.driver.Start(ctx, first); err == nil || !strings.Contains(err.Error(), "inaccessible") {
			t.Errorf("starting a clone whose template is gone: %v", err)
		}
	})
	t.Run("a clone step that fails unregisters the clone", func(t *testing.T) {
		f := newFake(t)
		s := f.spec("h-1")
		s.CPUs = 0 // fine for the fake's parser; the failure comes next
		if err := f.driver.Create(ctx, s); err != nil {
			t.Fatal(err)
		}
		// A second Create of the same name: clonevm refuses, nothing else
		// is registered.
		err := f.driver.Create(ctx, s)
		if err == nil || !strings.Contains(err.Error(), "already exists") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("version checks", func(t *testing.T) {
		for v, want := range map[string]string{"7.2.4r170995": "burn 100% CPU", "6.1.50r161033": "too old", "garbage": "not a version"} {
			if err := checkVersion(v, false); err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%s: %v", v, err)
			}
		}
		for _, v := range []string{"7.2.6r172322", "7.0.20r163906", "7.1.4r165100", "10.0.0"} {
			if err := checkVersion(v, false); err != nil {
				t.Errorf("%s: %v", v, err)
			}
		}
		if err := checkVersion("7.2.4r170995", true); err != nil {
			t.Errorf("--force must allow 7.2.4: %v", err)
		}
	})
}

func sshParse(pemBytes []byte) (ssh.Signer, error) { return ssh.ParsePrivateKey(pemBytes) }

func TestSharedFolderIsReadOnlyUnlessWritable(t *testing.T) {
	f := newFake(t)
	ctx := context.Background()
	src := t.TempDir()
	for _, writable := range []bool{false, true} {
		s := f.spec(fmt.Sprintf("s-%v", writable))
		s.Share = &vm.Share{HostDir: src, Writable: writable}
		if err := f.driver.Create(ctx, s); err != nil {
			t.Fatal(err)
		}
		state, _ := os.ReadFile(filepath.Join(f.home, "state.json"))
		want := `"workspace=` + src + `:ro"`
		if writable {
			want = `"workspace=` + src + `"`
		}
		if !strings.Contains(string(state), want) {
			t.Errorf("writable=%v: the fake's registry lacks %s", writable, want)
		}
	}
	s := f.spec("s-missing")
	s.Share = &vm.Share{HostDir: filepath.Join(src, "nope")}
	if err := f.driver.Create(ctx, s); err == nil || !strings.Contains(err.Error(), "Cannot open host directory") {
		t.Errorf("a missing host folder: %v", err)
	}
	if slices.Contains(f.registered(), "s-missing") {
		t.Error("a clone whose share failed stayed registered")
	}
}
