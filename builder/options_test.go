package builder

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestOptionsConfigRejectsBadChoicesBeforeMakingAnything(t *testing.T) {
	home := t.TempDir()
	notPEM := filepath.Join(home, "ca.txt")
	os.WriteFile(notPEM, []byte("hello"), 0o644)
	empty := filepath.Join(home, "empty.sh")
	os.WriteFile(empty, []byte(" \n"), 0o644)
	cloud := Options{Name: "ubuntu-24.04", Home: home, NoHostCA: true}
	for _, tc := range []struct {
		name string
		edit func(*Options)
		want string
	}{
		{"unknown image", func(o *Options) { o.Name = "fedora-40" }, `unknown image "fedora-40"`},
		{"two sources", func(o *Options) { o.Mirror, o.SourceURL = "http://m", "http://c/x.img" }, "give one"},
		{"unknown recipe", func(o *Options) { o.Recipe = "tiny" }, `unknown recipe "tiny"`},
		{"unknown output", func(o *Options) { o.Outputs = []string{"vhd"} }, `unknown output "vhd"`},
		{"missing CA file", func(o *Options) { o.CACertFiles = []string{filepath.Join(home, "none.crt")} }, "no such file"},
		{"CA not PEM", func(o *Options) { o.CACertFiles = []string{notPEM} }, "not a PEM certificate"},
		{"missing script", func(o *Options) { o.ScriptFiles = []string{filepath.Join(home, "none.sh")} }, "provision script"},
		{"empty script", func(o *Options) { o.ScriptFiles = []string{empty} }, "is empty"},
		{"no home", func(o *Options) { o.Home = "" }, "no fleet home"},
		{"cloud without checksums", func(o *Options) { o.Name, o.SourceURL = "debian-12", "http://c/x.img" }, "SHA256SUMS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := cloud
			tc.edit(&o)
			_, err := o.Config()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	if entries, _ := os.ReadDir(home); len(entries) != 2 {
		t.Fatalf("Config made files: %v", entries)
	}
}

func TestOptionsConfigFillsStoreCacheAndOverrides(t *testing.T) {
	home := t.TempDir()
	t.Setenv("FLEET_CACHE", "")
	script := filepath.Join(home, "my tools.sh")
	os.WriteFile(script, []byte("apt-get install -y corp-tools\n"), 0o644)
	ca := filepath.Join(home, "corp.crt")
	os.WriteFile(ca, []byte("-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----"), 0o644)
	cfg, err := Options{
		Name: "debian-12", SourceURL: "http://c/d.qcow2", ChecksumURL: "http://c/SHA256SUMS",
		Recipe: "base", ClaudeVersion: "2.1.0", Outputs: []string{"ova"}, CACertFiles: []string{ca},
		NoHostCA: true, IfChanged: true, Home: home, Accel: "tcg", ScriptFiles: []string{script},
	}.Config()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Source != SourceCloud || cfg.CloudImageURL != "http://c/d.qcow2" || cfg.ChecksumURL != "http://c/SHA256SUMS" {
		t.Errorf("source: %+v", cfg)
	}
	if cfg.Recipe.Name != "base" || cfg.ClaudeVersion != "2.1.0" || !cfg.IfChanged || len(cfg.Outputs) != 1 {
		t.Errorf("choices lost: %+v", cfg)
	}
	var order []string
	for _, s := range cfg.Recipe.Scripts {
		order = append(order, s.Name)
	}
	if i := slices.Index(order, "user-1-my_tools.sh"); i < 0 || i+1 >= len(order) || order[i+1] != "80-versions.sh" || order[len(order)-1] != "90-generalize.sh" {
		t.Errorf("user script not placed before versions and generalize: %v", order)
	}
	if cfg.Store.Root != filepath.Join(home, "images") || cfg.CacheDir != filepath.Join(home, "cache") || cfg.TmpDir != filepath.Join(home, "tmp") {
		t.Errorf("paths: store %s cache %s tmp %s", cfg.Store.Root, cfg.CacheDir, cfg.TmpDir)
	}
	if !strings.HasPrefix(string(cfg.CACerts), "-----BEGIN CERTIFICATE-----") || !strings.HasSuffix(string(cfg.CACerts), "\n") {
		t.Errorf("CA certs: %q", cfg.CACerts)
	}
	if cfg.Accel != "tcg" || cfg.BootTimeout != 10*time.Minute || cfg.Runner == nil {
		t.Errorf("accel %s timeout %s runner %v", cfg.Accel, cfg.BootTimeout, cfg.Runner)
	}
	t.Setenv("FLEET_CACHE", "/var/cache/x")
	cfg, err = Options{Name: "ubuntu-24.04", Home: home, NoHostCA: true, BootTimeout: time.Minute}.Config()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.CacheDir != "/var/cache/x" || cfg.BootTimeout != time.Minute || cfg.Recipe.Name != "full" {
		t.Errorf("cache %s timeout %s recipe %s", cfg.CacheDir, cfg.BootTimeout, cfg.Recipe.Name)
	}
	if !strings.Contains(cfg.CloudImageURL, "noble-server-cloudimg-amd64.img") {
		t.Errorf("default ubuntu source: %s", cfg.CloudImageURL)
	}
}

func TestOptionsConfigMirrorBuildNeedsRoot(t *testing.T) {
	_, err := Options{Name: "debian-12", Home: t.TempDir(), NoHostCA: true}.Config()
	if os.Geteuid() == 0 {
		if err != nil {
			t.Fatalf("root may build from a mirror: %v", err)
		}
		return
	}
	if err == nil || !strings.Contains(err.Error(), "needs root") {
		t.Fatalf("got %v", err)
	}
}
