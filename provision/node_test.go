package provision

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha512"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func tgz(t *testing.T, files map[string]string) []byte {
	var b bytes.Buffer
	gz := gzip.NewWriter(&b)
	tw := tar.NewWriter(gz)
	for name, body := range files {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(body)), Typeflag: tar.TypeReg})
		tw.Write([]byte(body))
	}
	tw.Close()
	gz.Close()
	return b.Bytes()
}

func integrity(b []byte) string {
	s := sha512.Sum512(b)
	return "sha512-" + base64.StdEncoding.EncodeToString(s[:])
}

// The Node.js script for real, into a temporary prefix, from a stand-in
// registry: installed when the integrity matches, refused when not.
func TestNodeScriptChecksTheRegistrysIntegrity(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("no curl")
	}
	var script []byte
	full, _ := Get("full")
	for _, s := range full.Scripts {
		if s.Name == "40-node.sh" {
			script = s.Body
		}
	}
	node := tgz(t, map[string]string{
		"package/bin/node":            "#!/bin/sh\ncase \"$1\" in --version) echo v26.1.0;; -p) echo 26;; esac\n",
		"package/include/node/node.h": "/* */\n",
	})
	npm := tgz(t, map[string]string{"package/bin/npm-cli.js": "#!/bin/sh\necho 11.2.0\n", "package/bin/npx-cli.js": "#!/bin/sh\n"})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "npm") {
			w.Write(npm)
		} else {
			w.Write(node)
		}
	}))
	defer srv.Close()
	run := func(nodeIntegrity string) (string, string, error) {
		prefix := t.TempDir()
		path := filepath.Join(t.TempDir(), "40-node.sh")
		os.WriteFile(path, script, 0o755)
		cmd := exec.Command("sh", path)
		cmd.Env = append(os.Environ(), "FLEET_NODE_PREFIX="+prefix, "FLEET_NODE_VERSION=26.1.0",
			"FLEET_NODE_TARBALL="+srv.URL+"/node.tgz", "FLEET_NODE_INTEGRITY="+nodeIntegrity,
			"FLEET_NPM_TARBALL="+srv.URL+"/npm.tgz", "FLEET_NPM_INTEGRITY="+integrity(npm))
		out, err := cmd.CombinedOutput()
		return prefix, string(out), err
	}
	prefix, out, err := run(integrity(node))
	if err != nil || !strings.Contains(out, "node v26.1.0, npm 11.2.0") {
		t.Fatalf("%v: %s", err, out)
	}
	for _, f := range []string{"bin/node", "bin/npm", "bin/npx", "include/node/node.h", "lib/node_modules/npm/bin/npm-cli.js"} {
		if _, err := os.Stat(filepath.Join(prefix, f)); err != nil {
			t.Errorf("%s not installed: %v", f, err)
		}
	}
	other := integrity([]byte("another tarball"))
	prefix, out, err = run(other)
	if err == nil || !strings.Contains(out, "not the registry's integrity") {
		t.Fatalf("a tarball that does not match: %v %s", err, out)
	}
	if _, err := os.Stat(filepath.Join(prefix, "bin/node")); err == nil {
		t.Fatal("a tarball that failed its check was installed")
	}
}
