package vm

import (
	"bytes"
	"fmt"
	"os"
	"strings"

	"github.com/kdomanski/iso9660"
)

// Seed is a machine's first-boot identity, delivered as a NoCloud seed.
type Seed struct {
	InstanceID    string // changes per clone so cloud-init runs again
	Hostname      string
	User          string // login user created with passwordless sudo
	AuthorizedKey string // the fleet's public key for User
	// HostKeyPrivate/Public are the guest sshd's ed25519 key, generated on
	// the host so the key is pinned before the first connection.
	HostKeyPrivate string
	HostKeyPublic  string
	// Files are written at first boot (cloud-init write_files), before
	// the services that read them start.
	Files []File
}

// File is one file the seed writes in the guest.
type File struct {
	Path    string
	Content string
	Mode    string // octal, e.g. "0644"
	Append  bool
}

// MetaData renders the NoCloud meta-data file.
func (s Seed) MetaData() string {
	return fmt.Sprintf("instance-id: %s\nlocal-hostname: %s\n", s.InstanceID, s.Hostname)
}

// UserData renders the #cloud-config user-data. Values are emitted as YAML
// quoted scalars or literal blocks, so no input can inject extra keys.
func (s Seed) UserData() string {
	var b strings.Builder
	b.WriteString("#cloud-config\n")
	fmt.Fprintf(&b, "hostname: %s\n", yamlQuote(s.Hostname))
	b.WriteString("preserve_hostname: false\nmanage_etc_hosts: true\n")
	// No ssh_pwauth: setting it makes cloud-init restart sshd after boot,
	// which resets connections made right after readiness. Images turn
	// password login off in sshd_config instead.
	b.WriteString("disable_root: true\n")
	b.WriteString("users:\n")
	fmt.Fprintf(&b, "  - name: %s\n", yamlQuote(s.User))
	b.WriteString("    shell: /bin/bash\n    lock_passwd: true\n")
	b.WriteString("    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n")
	fmt.Fprintf(&b, "    ssh_authorized_keys:\n      - %s\n", yamlQuote(s.AuthorizedKey))
	// Replace whatever host keys exist with exactly the pinned one.
	b.WriteString("ssh_deletekeys: true\nssh_genkeytypes: []\n")
	b.WriteString("ssh_keys:\n  ed25519_private: |\n")
	for _, l := range strings.Split(strings.TrimRight(s.HostKeyPrivate, "\n"), "\n") {
		b.WriteString("    " + l + "\n")
	}
	fmt.Fprintf(&b, "  ed25519_public: %s\n", yamlQuote(s.HostKeyPublic))
	if len(s.Files) > 0 {
		b.WriteString("write_files:\n")
		for _, f := range s.Files {
			fmt.Fprintf(&b, "  - path: %s\n    content: %s\n", yamlQuote(f.Path), yamlQuote(f.Content))
			if f.Mode != "" {
				fmt.Fprintf(&b, "    permissions: %s\n", yamlQuote(f.Mode))
			}
			if f.Append {
				b.WriteString("    append: true\n")
			}
		}
	}
	return b.String()
}

// yamlQuote emits a double-quoted YAML scalar (JSON strings are valid YAML).
func yamlQuote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20:
			fmt.Fprintf(&b, "\\x%02x", r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// WriteSeedISO writes the seed as an ISO 9660 volume labelled "cidata",
// which cloud-init's NoCloud data source finds on any attached disk, and
// which fast-booting images read without cloud-init (IdentityFile).
func WriteSeedISO(path string, s Seed) error {
	w, err := iso9660.NewWriter()
	if err != nil {
		return err
	}
	defer w.Cleanup()
	if err := w.AddFile(strings.NewReader(s.MetaData()), "meta-data"); err != nil {
		return err
	}
	if err := w.AddFile(strings.NewReader(s.UserData()), "user-data"); err != nil {
		return err
	}
	// Images with the fast-boot script run this instead of cloud-init.
	if err := w.AddFile(strings.NewReader(s.IdentityProgram(nil)), IdentityFile); err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := w.WriteTo(&buf, "cidata"); err != nil {
		return fmt.Errorf("write seed iso: %w", err)
	}
	return os.WriteFile(path, buf.Bytes(), 0o600)
}
