package builder

import (
	"os"

	"github.com/agentfleet/agentfleet/provision"
	"path/filepath"
	"testing"
)

func TestAptMirrorReadsDeb822AndOneLine(t *testing.T) {
	root := t.TempDir()
	d := filepath.Join(root, "etc", "apt", "sources.list.d")
	os.MkdirAll(d, 0o755)
	os.WriteFile(filepath.Join(d, "debian.sources"), []byte(`Types: deb
# a comment
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
`), 0o644)
	got, err := AptMirror(root)
	if err != nil || got != "http://mirror.example/debian" {
		t.Fatalf("got %q %v", got, err)
	}
	root2 := t.TempDir()
	os.MkdirAll(filepath.Join(root2, "etc", "apt"), 0o755)
	os.WriteFile(filepath.Join(root2, "etc", "apt", "sources.list"), []byte("deb [arch=amd64 signed-by=/k.gpg] http://m2.example/debian bookworm main\n"), 0o644)
	if got, err := AptMirror(root2); err != nil || got != "http://m2.example/debian" {
		t.Fatalf("got %q %v", got, err)
	}
	if _, err := AptMirror(t.TempDir()); err == nil {
		t.Fatal("no sources should be an error")
	}
}

func TestRecipeHashChangesWithInputs(t *testing.T) {
	c, err := Definition("debian-12", "")
	if err != nil {
		t.Fatal(err)
	}
	h1 := c.RecipeHash("http://a", "sha256:1", "2.1.0", "")
	if h1 != c.RecipeHash("http://a", "sha256:1", "2.1.0", "") {
		t.Fatal("hash not stable")
	}
	for what, h := range map[string]string{
		"mirror":         c.RecipeHash("http://b", "sha256:1", "2.1.0", ""),
		"source digest":  c.RecipeHash("http://a", "sha256:2", "2.1.0", ""),
		"claude version": c.RecipeHash("http://a", "sha256:1", "2.1.1", ""),
		"node version":   c.RecipeHash("http://a", "sha256:1", "2.1.0", "26.1.0 npm 11.0.0"),
	} {
		if h == h1 {
			t.Errorf("%s must change the hash", what)
		}
	}
	c.Packages = append(c.Packages, "jq")
	if h1 == c.RecipeHash("http://a", "sha256:1", "2.1.0", "") {
		t.Fatal("packages must change the hash")
	}
	c.Packages = c.Packages[:len(c.Packages)-1]
	c.Recipe, _ = provision.Get("base")
	if h1 == c.RecipeHash("http://a", "sha256:1", "2.1.0", "") {
		t.Fatal("the recipe must change the hash")
	}
	if _, err := Definition("nope", ""); err == nil {
		t.Fatal("unknown image accepted")
	}
}
