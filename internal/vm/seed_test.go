package vm

import (
	"strings"
	"testing"
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
