package vm

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kdomanski/iso9660"
)

func TestUserDataCannotBeInjected(t *testing.T) {
	s := Seed{InstanceID: "i-1", Hostname: "h\"\nruncmd: [reboot]", User: "agent", AuthorizedKey: "ssh-ed25519 AAAA x",
		HostKeyPrivate: "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n", HostKeyPublic: "ssh-ed25519 BBBB"}
	ud := s.UserData()
	if strings.Contains(ud, "\nruncmd:") {
		t.Fatalf("hostname injected a key:\n%s", ud)
	}
	for _, want := range []string{"#cloud-config\n", "ssh_genkeytypes: []", "    abc\n", `ed25519_public: "ssh-ed25519 BBBB"`, `NOPASSWD:ALL`} {
		if !strings.Contains(ud, want) {
			t.Errorf("user-data lacks %q", want)
		}
	}
}

func TestSeedFilesAreQuoted(t *testing.T) {
	s := Seed{InstanceID: "i-1", Hostname: "h", User: "agent", AuthorizedKey: "k", HostKeyPublic: "p",
		Files: []File{{Path: "/etc/environment", Content: "A=1\nruncmd: [reboot]\n", Mode: "0644", Append: true}}}
	ud := s.UserData()
	if strings.Contains(ud, "\nruncmd:") {
		t.Fatalf("file content injected a key:\n%s", ud)
	}
	for _, want := range []string{"write_files:\n  - path: \"/etc/environment\"\n", `content: "A=1\x0aruncmd: [reboot]\x0a"`, `permissions: "0644"`, "append: true"} {
		if !strings.Contains(ud, want) {
			t.Errorf("user-data lacks %q:\n%s", want, ud)
		}
	}
}

// The seed ISO carries the boot-time identity script under the name the
// fast-boot unit reads, byte for byte.
func TestSeedISOCarriesTheIdentityScript(t *testing.T) {
	s := Seed{InstanceID: "i-1", Hostname: "proj-1", User: "agent", AuthorizedKey: "ssh-ed25519 AAAA x", HostKeyPublic: "ssh-ed25519 BBBB",
		HostKeyPrivate: "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n"}
	path := filepath.Join(t.TempDir(), "seed.iso")
	if err := WriteSeedISO(path, s); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := iso9660.OpenImage(f)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := img.RootDir()
	children, _ := root.GetChildren()
	got := map[string]string{}
	for _, c := range children {
		b, _ := io.ReadAll(c.Reader())
		got[c.Name()] = string(b)
	}
	if got[IdentityFile] != s.IdentityProgram(nil) {
		t.Errorf("the seed's %s = %q, want the boot identity script; files: %v", IdentityFile, got[IdentityFile], mapsKeys(got))
	}
	if !strings.HasPrefix(got["user-data"], "#cloud-config\n") || !strings.Contains(got["meta-data"], "instance-id: i-1") {
		t.Errorf("cloud-init's files are missing: %v", mapsKeys(got))
	}
}

func mapsKeys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
