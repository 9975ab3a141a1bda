// Package registrytest starts a real OCI registry (Debian's
// docker-registry, the CNCF distribution registry) on loopback for tests,
// optionally behind basic auth with a Docker config that holds the login.
package registrytest

import (
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Binary is the registry program (apt-get install docker-registry).
const Binary = "docker-registry"

// Registry is one running registry.
type Registry struct {
	Addr    string // host:port (127.0.0.1 unless StartAt says)
	Storage string // its blob storage root
	// DockerConfig is a folder with a config.json holding the login (set
	// DOCKER_CONFIG to it); "" without auth.
	DockerConfig string
}

// Start runs a registry on loopback until the test ends; the test is
// skipped where the program is not installed.
func Start(t testing.TB, user, password string) *Registry {
	t.Helper()
	return StartAt(t, "127.0.0.1", user, password)
}

// StartAt is Start listening on host (an address of this machine that
// others reach, such as a test network's bridge).
func StartAt(t testing.TB, host, user, password string) *Registry {
	t.Helper()
	if _, err := exec.LookPath(Binary); err != nil {
		t.Skipf("%s is not installed (apt-get install docker-registry)", Binary)
	}
	dir := t.TempDir()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	r := &Registry{Addr: addr, Storage: filepath.Join(dir, "storage")}
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n", r.Storage, addr)
	if user != "" {
		hash, _ := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
		os.WriteFile(filepath.Join(dir, "htpasswd"), []byte(user+":"+string(hash)+"\n"), 0o600)
		cfg += fmt.Sprintf("auth:\n  htpasswd:\n    realm: fleet-test\n    path: %s\n", filepath.Join(dir, "htpasswd"))
		r.DockerConfig = filepath.Join(dir, "docker")
		os.MkdirAll(r.DockerConfig, 0o700)
		login := base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
		os.WriteFile(filepath.Join(r.DockerConfig, "config.json"), []byte(fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, addr, login)), 0o600)
	}
	os.WriteFile(filepath.Join(dir, "config.yml"), []byte(cfg), 0o600)
	cmd := exec.Command(Binary, "serve", filepath.Join(dir, "config.yml"))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for deadline := time.Now().Add(20 * time.Second); ; {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("the registry did not start: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// BlobPath is where the registry keeps a blob's bytes.
func (r *Registry) BlobPath(digest string) string {
	hex := digest[len("sha256:"):]
	return filepath.Join(r.Storage, "docker/registry/v2/blobs/sha256", hex[:2], hex, "data")
}
