//go:build linux

package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/images"
	"github.com/agentfleet/agentfleet/internal/registrytest"
)

// The suite's image through a real registry on loopback, behind basic
// auth: pushed, pulled into a fresh FLEET_HOME and spawned from; a second
// pull does nothing; a corrupted blob promotes nothing.
func TestImageThroughARegistry(t *testing.T) {
	requireE2E(t)
	parallelVM(t)
	reg := registrytest.Start(t, "fleet", "e2e-pass")
	ref := reg.Addr + "/agentfleet/debian-12"
	login := []string{"DOCKER_CONFIG=" + reg.DockerConfig}
	if r := fleetWithEnv(t, time.Minute, []string{"DOCKER_CONFIG=" + t.TempDir()}, "image", "push", "debian-12", ref); r.code == 0 || !strings.Contains(r.stderr, "asks for a login") || !strings.Contains(r.stderr, "docker login "+reg.Addr) {
		t.Fatalf("a push without a login: %d %s", r.code, r.stderr)
	}
	start := time.Now()
	r := fleetWithEnv(t, 10*time.Minute, login, "image", "push", "debian-12", ref)
	if r.code != 0 {
		t.Fatalf("push: %s", r.stderr)
	}
	t.Logf("push took %s", time.Since(start).Round(time.Second))
	local := imageLs(t)[0]

	laptop := t.TempDir() // a fresh FLEET_HOME, as on a laptop
	env := append([]string{"FLEET_HOME=" + laptop}, login...)
	start = time.Now()
	if r := fleetWithEnv(t, 10*time.Minute, env, "image", "pull", ref); r.code != 0 || !strings.Contains(r.stdout, "debian-12@"+local.Version) {
		t.Fatalf("pull: %d %s %s", r.code, r.stdout, r.stderr)
	}
	t.Logf("pull took %s", time.Since(start).Round(time.Second))
	pulled := imageLs(t, "FLEET_HOME="+laptop)
	if len(pulled) != 1 || pulled[0].Version != local.Version || !pulled[0].Latest {
		t.Fatalf("image ls after pull: %+v", pulled)
	}
	if r := fleetWithEnv(t, time.Minute, env, "image", "pull", ref, "--if-changed"); r.code != 3 || !strings.Contains(r.stderr, "already here") {
		t.Fatalf("second pull: %d %s", r.code, r.stderr)
	}
	spawn := append(env, "FLEET_HOME="+laptop)
	defer fleetWithEnv(t, 5*time.Minute, spawn, "destroy", "--all", "--force", "--name", "pulled")
	if r := fleetWithEnv(t, bootDeadline, spawn, "spawn", "1", "--name", "pulled", "--sync", "none", "--cold"); r.code != 0 {
		t.Fatalf("spawn from the pulled image: %s", r.stderr)
	}
	if r := fleetWithEnv(t, time.Minute, spawn, "exec", "pulled-1", "--name", "pulled", "--", "cat", "/etc/debian_version"); r.code != 0 || !strings.HasPrefix(r.stdout, "12") {
		t.Fatalf("exec in the machine from the pulled image: %s %s", r.stdout, r.stderr)
	}

	// The kernel's blob changed in the registry's storage: the disk comes
	// in whole, then the kernel fails its digest, and nothing is promoted.
	kernel := filepath.Join(local.Dir, local.Outputs["kernel"].File)
	if _, err := os.Stat(kernel); err != nil {
		t.Fatalf("the suite's image has no kernel output: %v", err)
	}
	blob := reg.BlobPath("sha256:" + local.Outputs["kernel"].SHA256)
	f, err := os.OpenFile(blob, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("tampered"), 4096)
	f.Close()
	other := t.TempDir()
	r = fleetWithEnv(t, 10*time.Minute, append([]string{"FLEET_HOME=" + other}, login...), "image", "pull", ref)
	if r.code == 0 || !strings.Contains(r.stderr, "does not match its digest") {
		t.Fatalf("pull of a tampered image: %d %s", r.code, r.stderr)
	}
	if imgs := imageLs(t, "FLEET_HOME="+other); len(imgs) != 0 {
		t.Fatalf("a tampered pull stored %+v", imgs)
	}
	left, _ := filepath.Glob(filepath.Join(other, "images", "debian-12", "*"))
	if len(left) != 0 {
		t.Fatalf("a tampered pull left %v", left)
	}
}

// A pushed image whose disk names a host file as its backing file (the
// attack: every clone's disk then read the host's private key) is
// refused on pull, with the reason, and nothing is promoted: the pulled
// good image stays latest and no version folder appears. The same disk
// planted in a store by hand is refused by spawn before anything boots.
func TestPullRefusesADiskThatNamesAHostFile(t *testing.T) {
	requireE2E(t)
	parallelVM(t)
	reg := registrytest.Start(t, "", "")
	ref := reg.Addr + "/agentfleet/debian-12"
	if r := fleet(t, 10*time.Minute, "image", "push", "debian-12", ref); r.code != 0 {
		t.Fatalf("push: %s", r.stderr)
	}
	local := imageLs(t)[0]
	laptop := t.TempDir()
	env := []string{"FLEET_HOME=" + laptop}
	if r := fleetWithEnv(t, 10*time.Minute, env, "image", "pull", ref); r.code != 0 {
		t.Fatalf("pull of the good image: %s", r.stderr)
	}

	// The attacker's version: a qcow2 whose backing file is a host key,
	// with a manifest and digests that match, pushed as latest.
	secret := filepath.Join(t.TempDir(), "id_ed25519")
	os.WriteFile(secret, []byte("-----BEGIN OPENSSH PRIVATE KEY-----\nthe host's own key\n-----END OPENSSH PRIVATE KEY-----\n"), 0o600)
	evil := hostileVersion(t, local, secret)
	remote, err := images.OpenRemote(ref, false, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Push(context.Background(), evil); err != nil {
		t.Fatalf("push of the crafted version: %v", err)
	}

	before := versionFolders(t, laptop)
	for _, tag := range []string{"", ":" + evil.Version} {
		r := fleetWithEnv(t, 10*time.Minute, env, "image", "pull", ref+tag)
		if r.code == 0 || !strings.Contains(r.stderr, `names the backing file "`+secret+`"`) || !strings.Contains(r.stderr, "nothing is promoted") {
			t.Fatalf("pull %s of a disk naming a host file: %d %s", tag, r.code, r.stderr)
		}
	}
	if after := versionFolders(t, laptop); !slices.Equal(after, before) {
		t.Fatalf("a refused pull changed the store: %v, was %v", after, before)
	}
	pulled := imageLs(t, env...)
	if len(pulled) != 1 || pulled[0].Version != local.Version || !pulled[0].Latest {
		t.Fatalf("image ls after the refused pull: %+v", pulled)
	}

	// Planted by hand (or left by a fleet from before the check): listed
	// as refused, and spawn refuses it without booting.
	planted := t.TempDir()
	dir := filepath.Join(planted, "images", "debian-12", evil.Version)
	os.MkdirAll(dir, 0o755)
	for _, f := range []string{images.DiskFile, images.ManifestFile} {
		b, _ := os.ReadFile(filepath.Join(evil.Dir, f))
		os.WriteFile(filepath.Join(dir, f), b, 0o444)
	}
	os.Symlink(evil.Version, filepath.Join(planted, "images", "debian-12", "latest"))
	penv := []string{"FLEET_HOME=" + planted}
	if r := fleetWithEnv(t, time.Minute, penv, "image", "ls"); r.code != 0 || !strings.Contains(r.stderr, "names the backing file") || strings.Contains(r.stdout, evil.Version) {
		t.Fatalf("image ls of a planted version: %d %s %s", r.code, r.stdout, r.stderr)
	}
	defer fleetWithEnv(t, 5*time.Minute, penv, "destroy", "--all", "--force", "--name", "planted")
	r := fleetWithEnv(t, 2*time.Minute, penv, "spawn", "1", "--name", "planted", "--image", "debian-12", "--sync", "none", "--cold")
	if r.code == 0 || !strings.Contains(r.stderr, "names the backing file") {
		t.Fatalf("spawn from a planted disk naming a host file: %d %s", r.code, r.stderr)
	}
	if out := fleetWithEnv(t, time.Minute, penv, "ls", "--json", "--name", "planted"); strings.Contains(out.stdout, "planted-1") {
		t.Fatalf("a machine was made: %s", out.stdout)
	}
}

// hostileVersion writes a version folder as an attacker with push rights
// would: the suite image's manifest, a newer version, and a disk made by
// qemu-img whose backing file is secret, with its real digest and size.
func hostileVersion(t *testing.T, like imageRow, secret string) images.Image {
	t.Helper()
	dir := t.TempDir()
	disk := filepath.Join(dir, images.DiskFile)
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", secret, "-F", "raw", disk, "1M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v %s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(like.Dir, images.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	var m images.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	n, _ := io.Copy(h, f)
	f.Close()
	m.Version, m.DiskSHA256, m.DiskBytes, m.Outputs, m.KernelCmdline = "29991231-000000", hex.EncodeToString(h.Sum(nil)), n, nil, ""
	b, _ = json.MarshalIndent(m, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, images.ManifestFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return images.Image{Manifest: m, Dir: dir, Disk: disk}
}

// versionFolders lists everything in a home's debian-12 image folder.
func versionFolders(t *testing.T, home string) []string {
	t.Helper()
	entries, _ := os.ReadDir(filepath.Join(home, "images", "debian-12"))
	var out []string
	for _, e := range entries {
		target, _ := os.Readlink(filepath.Join(home, "images", "debian-12", e.Name()))
		out = append(out, e.Name()+"->"+target)
	}
	return out
}
