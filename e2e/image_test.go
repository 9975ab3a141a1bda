//go:build linux

package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type imageRow struct {
	Name         string            `json:"name"`
	Version      string            `json:"version"`
	Latest       bool              `json:"latest"`
	Recipe       string            `json:"recipe"`
	SourceDigest string            `json:"source_digest"`
	Packages     map[string]string `json:"packages"`
	Disk         string            `json:"disk"`
	DiskBytes    int64             `json:"disk_bytes"`
	BuildSeconds float64           `json:"build_seconds"`
	Dir          string            `json:"dir"`
	Outputs      map[string]struct {
		File   string `json:"file"`
		SHA256 string `json:"sha256"`
	} `json:"outputs"`
}

func imageLs(t *testing.T, env ...string) []imageRow {
	t.Helper()
	r := fleetWithEnv(t, time.Minute, env, "image", "ls", "--json")
	if r.code != 0 {
		t.Fatalf("image ls: %s", r.stderr)
	}
	var rows []imageRow
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatal(err)
	}
	return rows
}

// serveCloudImage serves disk and a SHA256SUMS listing it (with digest
// overriding the real one when set), like a cloud image site.
func serveCloudImage(t *testing.T, disk, digest string) (imageURL, sumsURL string) {
	t.Helper()
	if digest == "" {
		f, err := os.Open(disk)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		io.Copy(h, f)
		f.Close()
		digest = hex.EncodeToString(h.Sum(nil))
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/SHA256SUMS":
			fmt.Fprintf(w, "%s *cloud.qcow2\n", digest)
		case "/cloud.qcow2":
			http.ServeFile(w, r, disk)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/cloud.qcow2", srv.URL + "/SHA256SUMS"
}

func latestDisk(t *testing.T) string {
	for _, r := range imageLs(t) {
		if r.Name == "debian-12" && r.Latest {
			return r.Disk
		}
	}
	t.Fatal("no debian-12 latest")
	return ""
}

// The mirror-built image TestMain baked carries the toolchain and says so.
func TestBakedImageManifest(t *testing.T) {
	requireE2E(t)
	rows := imageLs(t)
	if len(rows) == 0 {
		t.Fatal("no image")
	}
	r := rows[0]
	if r.Recipe != "full" || !strings.HasPrefix(r.SourceDigest, "sha256:") {
		t.Fatalf("manifest: %+v", r)
	}
	for _, k := range []string{"kernel", "docker", "node", "claude-code"} {
		if r.Packages[k] == "" {
			t.Errorf("manifest lacks the %s version: %v", k, r.Packages)
		}
	}
}

// The SSH communicator path: a cloud image (here the e2e's own Debian
// disk, served over HTTP with a SHA256SUMS) booted, provisioned over SSH
// with the light recipe, shut down, verified in a fresh clone and promoted.
// Then --if-changed is a no-op, and a Ctrl-C'd bake leaves nothing behind.
func TestImageFromCloudSourceOverSSH(t *testing.T) {
	requireE2E(t)
	parallelVM(t) // its own FLEET_HOME and cache; mostly one guest at a time
	home, cache := t.TempDir(), t.TempDir()
	env := []string{"FLEET_HOME=" + home, "FLEET_CACHE=" + cache}
	src, sums := serveCloudImage(t, latestDisk(t), "")
	build := []string{"image", "build", "debian-12", "--source-url", src, "--checksum-url", sums, "--recipe", "base"}

	r := fleetWithEnv(t, 2*bootDeadline, env, build...)
	if r.code != 0 {
		t.Fatalf("cloud build failed (%d): %s", r.code, r.stderr)
	}
	for _, want := range []string{"sha256 verified", "booting the source image", "provision [1/6] 10-boot.sh", "verify: agent user with passwordless sudo", "promoted to latest",
		// The source is a fleet image: its initrd's inputs are the same.
		"initrd: unchanged since it was made"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("build output lacks %q", want)
		}
	}
	rows := imageLs(t, env...)
	if len(rows) != 1 || !rows[0].Latest || rows[0].Recipe != "base" || !strings.Contains(rows[0].Packages["os"], "Debian") {
		t.Fatalf("image ls: %+v", rows)
	}
	first := rows[0].Version
	if p := qemuFor(home); p != "" {
		t.Fatalf("build VMs left running:\n%s", p)
	}

	t.Run("--if-changed skips with exit 3", func(t *testing.T) {
		t0 := time.Now()
		r := fleetWithEnv(t, 5*time.Minute, env, append(build, "--if-changed")...)
		if r.code != 3 || !strings.Contains(r.stderr, "nothing to build") {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		t.Logf("--if-changed no-op took %s", time.Since(t0).Round(time.Millisecond))
		if rows := imageLs(t, env...); len(rows) != 1 {
			t.Fatalf("a skipped build stored a version: %+v", rows)
		}
	})

	t.Run("a failing script shows its output and leaves no VM, no scratch disk and the old latest", func(t *testing.T) {
		script := filepath.Join(t.TempDir(), "corp-tools.sh")
		os.WriteFile(script, []byte("echo 'E: Unable to locate package corp-tools' >&2\nexit 42\n"), 0o644)
		r := fleetWithEnv(t, 2*bootDeadline, env, append(build, "--script", script)...)
		if r.code != 1 {
			t.Fatalf("want exit 1, got %d", r.code)
		}
		for _, want := range []string{"user-1-corp-tools.sh failed with exit status 42", "E: Unable to locate package corp-tools"} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("error output lacks %q", want)
			}
		}
		if p := qemuFor(home); p != "" {
			t.Fatalf("VM left running after a failed script:\n%s", p)
		}
		if left, _ := os.ReadDir(filepath.Join(home, "tmp")); len(left) != 0 {
			t.Fatalf("scratch left after a failed script: %v", left)
		}
		rows := imageLs(t, env...)
		if len(rows) != 1 || rows[0].Version != first || !rows[0].Latest {
			t.Fatalf("latest moved or a version appeared: %+v", rows)
		}
	})

	t.Run("Ctrl-C mid-bake leaves no VM, no scratch disk and the old latest", func(t *testing.T) {
		// --no-host-ca is another recipe: no cache hit, so a VM boots.
		interruptOnceRunning(t, 2*time.Minute, fleetEnv(append(env, "FLEET_CACHE="+t.TempDir())...),
			func() bool { return qemuFor(home) != "" }, append(build, "--no-host-ca")...)
		if p := qemuFor(home); p != "" {
			t.Fatalf("VM left running after Ctrl-C:\n%s", p)
		}
		if left, _ := os.ReadDir(filepath.Join(home, "tmp")); len(left) != 0 {
			t.Fatalf("scratch left after Ctrl-C: %v", left)
		}
		rows := imageLs(t, env...)
		if len(rows) != 1 || rows[0].Version != first || !rows[0].Latest {
			t.Fatalf("latest moved or a version appeared: %+v", rows)
		}
	})
}

// Bad input to image build: one clear line, non-zero exit, nothing stored.
func TestImageBuildBadInput(t *testing.T) {
	requireE2E(t)
	disk := latestDisk(t)
	goodSrc, goodSums := serveCloudImage(t, disk, "")
	_, badSums := serveCloudImage(t, disk, strings.Repeat("ab", 32))
	tiny := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", tiny).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	defer exec.Command("umount", tiny).Run()
	cases := []struct {
		name, home string
		args       []string
		want       string
	}{
		{"unknown image", "", []string{"image", "build", "windows-11"}, "unknown image"},
		{"unknown recipe", "", []string{"image", "build", "debian-12", "--recipe", "everything"}, "unknown recipe"},
		{"unknown output", "", []string{"image", "build", "debian-12", "--output", "iso"}, "unknown output"},
		{"unreachable source", "", []string{"image", "build", "debian-12", "--source-url", "http://127.0.0.1:1/x.img", "--checksum-url", "http://127.0.0.1:1/SHA256SUMS"}, "source unreachable"},
		{"checksum mismatch", "", []string{"image", "build", "debian-12", "--source-url", goodSrc, "--checksum-url", badSums, "--recipe", "base"}, "checksum mismatch"},
		{"unreachable mirror", "", []string{"image", "build", "debian-12", "--mirror", "http://127.0.0.1:1/debian"}, "package mirror unreachable"},
		{"no disk space", tiny, []string{"image", "build", "debian-12", "--source-url", goodSrc, "--checksum-url", goodSums, "--recipe", "base"}, "not enough disk space"},
		{"prune without --keep", "", []string{"image", "prune"}, "--keep"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			home := tc.home
			if home == "" {
				home = t.TempDir()
			}
			env := []string{"FLEET_HOME=" + home, "FLEET_CACHE=" + filepath.Join(home, "cache")}
			r := fleetWithEnv(t, 5*time.Minute, env, tc.args...)
			if r.code == 0 || r.code == 3 {
				t.Fatalf("exit %d for bad input", r.code)
			}
			lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
			last := lines[len(lines)-1]
			if !strings.Contains(last, tc.want) {
				t.Errorf("last line %q lacks %q", last, tc.want)
			}
			if rows := imageLs(t, env...); len(rows) != 0 {
				t.Errorf("bad input stored an image: %+v", rows)
			}
			if left, _ := os.ReadDir(filepath.Join(home, "tmp")); len(left) != 0 {
				t.Errorf("scratch left: %v", left)
			}
		})
	}
}
