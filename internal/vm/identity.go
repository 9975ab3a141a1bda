package vm

import (
	"encoding/base64"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/agentfleet/agentfleet/internal/execx"
)

// IdentityFile is the seed's copy of IdentityScript(nil), which images
// baked with the fast-boot script run at boot in place of cloud-init.
const IdentityFile = "fleet-identity"

// Restored is what a clone restored from a warm template needs on top of
// its seed: the template's machine-id and randomness are its siblings' too,
// and its services already run.
type Restored struct {
	MachineID string
	Entropy   []byte // host randomness mixed into the guest's
}

// IdentityScript is the shell script, run as root in the guest, that gives
// it the seed's identity: hostname, host key, the user's key and the
// seed's files. Every value is quoted, so none can run as a command, and
// everything it writes comes from the host. With r it is a restored clone:
// the script also reseeds the kernel's CRNG, sets a new machine-id and
// makes sshd (and Docker, if it runs) reread what changed. Without r it
// runs at boot, before sshd starts and where systemd makes the machine-id.
func (s Seed) IdentityScript(r *Restored) string {
	q := execx.ShellQuote
	var b strings.Builder
	b.WriteString("set -eu\n")
	if r != nil {
		// The host's bytes mixed in, then an explicit reseed (the VM
		// generation ID device has changed too). perl-base is essential
		// on Debian and Ubuntu and starts far faster than python under
		// emulation. 0x5207 is RNDRESEEDCRNG.
		fmt.Fprintf(&b, "perl -MMIME::Base64 -e 'open(my $f, \">\", \"/dev/urandom\") or die $!; syswrite($f, decode_base64(\"%s\")) or die $!; ioctl($f, 0x5207, 0) or die \"RNDRESEEDCRNG: $!\"'\n",
			base64.StdEncoding.EncodeToString(r.Entropy))
		b.WriteString("echo 'fleet: crng reseeded (RNDRESEEDCRNG) for a new clone' > /dev/kmsg\n")
		fmt.Fprintf(&b, "echo %s > /etc/machine-id\n", q(r.MachineID))
	}
	fmt.Fprintf(&b, "echo %s > /etc/hostname; hostname %s\n", q(s.Hostname), q(s.Hostname))
	fmt.Fprintf(&b, "sed -i '/^127\\.0\\.1\\.1[[:space:]]/d' /etc/hosts; echo %s >> /etc/hosts\n", q("127.0.1.1 "+s.Hostname))
	b.WriteString("rm -f /etc/ssh/ssh_host_*\n")
	fmt.Fprintf(&b, "printf '%%s\\n' %s > /etc/ssh/ssh_host_ed25519_key\n", q(strings.TrimSpace(s.HostKeyPrivate)))
	fmt.Fprintf(&b, "printf '%%s\\n' %s > /etc/ssh/ssh_host_ed25519_key.pub\n", q(s.HostKeyPublic))
	b.WriteString("chmod 600 /etc/ssh/ssh_host_ed25519_key\n")
	home := "/home/" + s.User
	fmt.Fprintf(&b, "install -d -m 700 -o %s -g %s %s/.ssh\n", q(s.User), q(s.User), q(home))
	fmt.Fprintf(&b, "printf '%%s\\n' %s > %s/.ssh/authorized_keys\n", q(s.AuthorizedKey), q(home))
	fmt.Fprintf(&b, "chown %s: %s/.ssh/authorized_keys; chmod 600 %s/.ssh/authorized_keys\n", q(s.User), q(home), q(home))
	for _, f := range s.Files {
		fmt.Fprintf(&b, "mkdir -p %s\n", q(filepath.Dir(f.Path)))
		op := ">"
		if f.Append {
			op = ">>"
		}
		fmt.Fprintf(&b, "printf '%%s' %s %s %s\n", q(f.Content), op, q(f.Path))
		if f.Mode != "" {
			fmt.Fprintf(&b, "chmod %s %s\n", q(f.Mode), q(f.Path))
		}
	}
	if r != nil {
		// sshd rereads its host keys on SIGHUP; Docker its proxy settings
		// on restart (only if it ever started: it is socket-activated).
		b.WriteString("systemctl reload ssh 2>/dev/null || systemctl reload sshd\n")
		b.WriteString("if systemctl is-active --quiet docker; then systemctl restart --no-block docker; fi\n")
	}
	return b.String()
}
