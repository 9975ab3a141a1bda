package qemu

import (
	"fmt"
	"testing"
)

// What "info usernet" printed (QEMU 7.2), with an SSH session open, one
// the host closed, a proxied call the guest half-closed, and a state this
// reader does not know.
const usernetSample = `Hub -1 (net0):
  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ
  TCP[HOST_FORWARD]  13       127.0.0.1 34127       10.0.2.15    22     0     0
  TCP[ESTABLISHED]   22       127.0.0.1 51302       10.0.2.15    22     0     0
  TCP[FIN_WAIT_2]    24       127.0.0.1 51310       10.0.2.15    22     0     0
  TCP[TIME_WAIT]     -1       127.0.0.1 51318       10.0.2.15    22     0     0
  TCP[CLOSE_WAIT]    25      10.0.2.100  8119       10.0.2.15 40112     0     0
  UDP[236 sec]       26       10.0.2.15 53211        10.0.2.3    53     0     0
  TCP[SOMETHING_NEW] 27       127.0.0.1 51320       10.0.2.15    22     0     0
`

func TestOpenConnections(t *testing.T) {
	if got := fmt.Sprint(openConnections(usernetSample)); got != "[ESTABLISHED CLOSE_WAIT SOMETHING_NEW]" {
		t.Errorf("open: %s", got)
	}
	if p, ok := parseHostFwdPort(usernetSample); !ok || p != 34127 {
		t.Errorf("port %d %v", p, ok)
	}
	idle := "Hub -1 (net0):\n  TCP[HOST_FORWARD]  13       127.0.0.1 34127       10.0.2.15    22     0     0\n  TCP[TIME_WAIT]     -1       127.0.0.1 51318       10.0.2.15    22     0     0\n"
	if got := openConnections(idle); len(got) != 0 {
		t.Errorf("an idle machine has %v open", got)
	}
}
