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
