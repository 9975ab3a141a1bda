package fleet

import (
	"fmt"
	"strings"
)

// knownHosts renders a known_hosts file keyed by machine name. Clients use
// HostKeyAlias, so the pinned key follows the machine when its forwarded
// port changes after a restart.
func knownHosts(s *State) string {
	var b strings.Builder
	for _, m := range s.Machines {
		fmt.Fprintf(&b, "%s %s\n", m.Name, m.HostKey)
	}
	return b.String()
}

func (c *Controller) writeKnownHosts(s *State) error {
	if len(s.Machines) == 0 {
		return nil
	}
	return WriteFileAtomic(c.Layout.KnownHosts(c.Fleet), []byte(knownHosts(s)), 0o644)
}

// SSHConfig renders an OpenSSH config block per running machine, with full
// host key checking against the fleet's known_hosts.
func (c *Controller) SSHConfig(s *State, ms []*Machine) (string, error) {
	if err := c.writeKnownHosts(s); err != nil {
		return "", err
	}
	var b strings.Builder
	for _, m := range ms {
		if m.SSHAddr == "" || m.Desired != WantRunning {
			fmt.Fprintf(&b, "# %s is not running\n", m.Name)
			continue
		}
		host, port, _ := strings.Cut(m.SSHAddr, ":")
		fmt.Fprintf(&b, "Host %s\n", m.Name)
		fmt.Fprintf(&b, "  HostName %s\n  Port %s\n  User %s\n", host, port, GuestUser)
		fmt.Fprintf(&b, "  IdentityFile %s\n  IdentitiesOnly yes\n", quoteConfig(c.Layout.KeyFile(c.Fleet)))
		fmt.Fprintf(&b, "  UserKnownHostsFile %s\n", quoteConfig(c.Layout.KnownHosts(c.Fleet)))
		fmt.Fprintf(&b, "  HostKeyAlias %s\n  StrictHostKeyChecking yes\n  CheckHostIP no\n  LogLevel ERROR\n\n", m.Name)
	}
	return b.String(), nil
}

// quoteConfig quotes a path for ssh_config if it has spaces.
func quoteConfig(p string) string {
	if strings.ContainsAny(p, " \t") {
		return `"` + p + `"`
	}
	return p
}
