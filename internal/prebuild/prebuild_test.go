package prebuild

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// project makes a project folder from path -> content ("" content with a
// trailing / is a folder).
func project(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for p, c := range files {
		full := filepath.Join(dir, filepath.FromSlash(p))
		if strings.HasSuffix(p, "/") {
			os.MkdirAll(full, 0o755)
			continue
		}
		os.MkdirAll(filepath.Dir(full), 0o755)
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestCheckPattern(t *testing.T) {
	for p, ok := range map[string]bool{
		"package-lock.json":     true,
		"*/go.sum":              true,
		"requirements*.txt":     true,
		"web/[ab]pp/yarn.lock":  true,
		"":                      false,
		"/etc/passwd":           false,
		"../x":                  false,
		"a/../../x":             false,
		"a/..":                  false,
		"**/package-lock.json":  false,
		"a//b":                  false,
		"./a":                   false,
		"a/":                    false,
		"[":                     false,
		"nul\x00byte":           false,
		"a/./b":                 false,
		"..":                    false,
		"...":                   true, // a name, not a parent
		"-rf":                   true, // never passed to a command
		"dir with spaces/x.txt": true,
	} {
		if err := CheckPattern(p); (err == nil) != ok {
			t.Errorf("CheckPattern(%q) = %v, want ok %v", p, err, ok)
		}
	}
}

func TestDefaultInputsAreTheLockfilesFound(t *testing.T) {
	dir := project(t, map[string]string{
		"package-lock.json":               "{}",
		"requirements.txt":                "flask",
		"requirements-dev.txt":            "pytest",
		"web/yarn.lock":                   "y",
		"web/deep/Cargo.lock":             "two levels down: not looked for",
		".git/go.sum":                     "in a dot folder: not the project's",
		"go.sum/":                         "", // a folder named like a lockfile
		"src/main.go":                     "package main",
		"notes.txt":                       "",
		"node_modules/.package-lock.json": "npm's own, a dot name",
	})
	if err := syscall.Mkfifo(filepath.Join(dir, "uv.lock"), 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var got []string
	var err error
	go func() { got, err = Inputs(dir, nil); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Inputs hangs on a FIFO named like a lockfile")
	}
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"package-lock.json", "requirements-dev.txt", "requirements.txt", "web/yarn.lock"}
	if !slices.Equal(got, want) {
		t.Fatalf("inputs %q, want %q", got, want)
	}
	// None found is no inputs, not an error.
	if got, err := Inputs(t.TempDir(), nil); err != nil || len(got) != 0 {
		t.Errorf("empty project: %q %v", got, err)
	}
}

func TestNamedInputs(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(outside, []byte("secret"), 0o600)
	dir := project(t, map[string]string{
		"package-lock.json": "{}",
		"a/go.sum":          "a",
		"b/go.sum":          "b",
		"c/":                "",
		"lockdir/":          "",
		"in/real.lock":      "r",
	})
	os.Symlink(outside, filepath.Join(dir, "out.lock"))
	os.Symlink(filepath.Dir(outside), filepath.Join(dir, "outdir"))
	os.Symlink("in/real.lock", filepath.Join(dir, "inside.lock"))
	os.Symlink("../../"+filepath.Base(filepath.Dir(outside)), filepath.Join(dir, "rel-out"))
	syscall.Mkfifo(filepath.Join(dir, "fifo.lock"), 0o644)

	for _, tc := range []struct {
		in      []string
		want    []string
		wantErr string
	}{
		{in: []string{}, want: nil},
		{in: []string{"package-lock.json"}, want: []string{"package-lock.json"}},
		{in: []string{"*/go.sum", "a/go.sum"}, want: []string{"a/go.sum", "b/go.sum"}},
		{in: []string{"inside.lock"}, want: []string{"inside.lock"}},
		{in: []string{"o*.lock"}, wantErr: "out.lock"}, // a glob may not reach out either
		{in: []string{"yarn.lock"}, wantErr: `"yarn.lock": no such file`},
		{in: []string{"*/yarn.lock"}, wantErr: "matches no file"},
		{in: []string{"out.lock"}, wantErr: "inside the project"},
		{in: []string{"outdir/secret"}, wantErr: "inside the project"},
		{in: []string{"rel-out/secret"}, wantErr: "inside the project"},
		{in: []string{"../secret"}, wantErr: ".."},
		{in: []string{outside}, wantErr: "absolute"},
		{in: []string{"lockdir"}, wantErr: "not a regular file"},
		{in: []string{"fifo.lock"}, wantErr: "not a regular file"},
		{in: []string{"package-lock.json/x"}, wantErr: "package-lock.json/x"},
	} {
		got, err := Inputs(dir, tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: %q, %v; want an error with %q", tc.in, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%q: %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	// A default lockfile that links out of the project is refused too:
	// skipping it would key the prebuild without it.
	os.Symlink(outside, filepath.Join(dir, "Cargo.lock"))
	if _, err := Inputs(dir, nil); err == nil {
		t.Error("a default that links out was accepted")
	}
}

func TestKeyChangesWithEveryPart(t *testing.T) {
	dir := project(t, map[string]string{"package-lock.json": "{\"v\":1}", "web/yarn.lock": "y"})
	inputs := []string{"package-lock.json", "web/yarn.lock"}
	key := func(tpl string, setup []string, in []string) (string, string) {
		t.Helper()
		k, d, err := Key(tpl, setup, dir, in)
		if err != nil {
			t.Fatal(err)
		}
		if len(k) != 64 || len(d) != 64 {
			t.Fatalf("key %q digest %q", k, d)
		}
		return k, d
	}
	base, baseDigest := key("tpl", []string{"npm ci"}, inputs)
	if k, d := key("tpl", []string{"npm ci"}, []string{"web/yarn.lock", "package-lock.json", "web/yarn.lock"}); k != base || d != baseDigest {
		t.Error("the key depends on the inputs' order or repeats")
	}
	seen := map[string]string{base: "base"}
	for name, k := range map[string]string{
		"template": first(key("tpl2", []string{"npm ci"}, inputs)),
		"setup":    first(key("tpl", []string{"npm install"}, inputs)),
		"no setup": first(key("tpl", nil, inputs)),
		"split":    first(key("tpl", []string{"npm", "ci"}, inputs)),
		"joined":   first(key("tpl", []string{"npmci"}, inputs)),
		"fewer":    first(key("tpl", []string{"npm ci"}, inputs[:1])),
		"shifted":  first(key("tplnpm ci", nil, inputs)),
	} {
		if other, ok := seen[k]; ok {
			t.Errorf("%s has the key of %s", name, other)
		}
		seen[k] = name
	}
	if k1, _ := key("t", []string{"a b"}, nil); k1 == first(key("t", []string{"a", "b"}, nil)) {
		t.Error(`["a b"] and ["a","b"] share a key`)
	}
	// One byte of an input changes the key and the inputs' digest.
	os.WriteFile(filepath.Join(dir, "package-lock.json"), []byte("{\"v\":2}"), 0o644)
	if k, d := key("tpl", []string{"npm ci"}, inputs); k == base || d == baseDigest {
		t.Error("a changed input kept the key")
	}
	// A renamed input with the same bytes is another key.
	_, before := key("tpl", nil, []string{"web/yarn.lock"})
	os.MkdirAll(filepath.Join(dir, "app"), 0o755)
	os.Rename(filepath.Join(dir, "web", "yarn.lock"), filepath.Join(dir, "app", "yarn.lock"))
	if _, d := key("tpl", nil, []string{"app/yarn.lock"}); d == before {
		t.Error("a moved input kept the digest")
	}
}

// first returns its first argument; key's second value would be the
// digest (keys of the same setup share nothing with digests).
func first(a, _ string) string { return a }

func TestKeyRefusesHostileInputs(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(outside, []byte("secret"), 0o600)
	dir := project(t, map[string]string{"ok.lock": "ok", "adir/": ""})
	os.Symlink(outside, filepath.Join(dir, "out.lock"))
	syscall.Mkfifo(filepath.Join(dir, "fifo.lock"), 0o644)
	big, _ := os.Create(filepath.Join(dir, "big.lock"))
	big.Truncate(MaxInputBytes + 1)
	big.Close()
	for _, in := range []string{"missing.lock", "out.lock", "fifo.lock", "adir", "../x", outside, "big.lock", ""} {
		done := make(chan error, 1)
		go func() {
			_, _, err := Key("tpl", nil, dir, []string{"ok.lock", in})
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil {
				t.Errorf("input %q was read", in)
			} else if in != "" && !strings.Contains(err.Error(), filepath.Base(in)) {
				t.Errorf("input %q: the error does not name it: %v", in, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("Key hangs on %q", in)
		}
	}
	if _, _, err := Key("tpl", nil, filepath.Join(dir, "nope"), nil); err == nil {
		t.Error("a missing project was keyed")
	}
}
