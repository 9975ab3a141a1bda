package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/internal/vm"
)

// fakeGuestAgent answers a guest agent's sync, exec and status over the
// machine's socket, and hands the script it was sent to got.
func fakeGuestAgent(t *testing.T, dir string, got chan<- string) {
	ln, err := net.Listen("unix", qgaPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			var req struct {
				Execute   string `json:"execute"`
				Arguments struct {
					ID        int64  `json:"id"`
					InputData string `json:"input-data"`
				} `json:"arguments"`
			}
			json.Unmarshal(bytes.TrimLeft(line, "\xff"), &req)
			switch req.Execute {
			case "guest-sync-delimited":
				c.Write([]byte("\xff{\"return\": " + strconv.FormatInt(req.Arguments.ID, 10) + "}\n"))
			case "guest-exec":
				b, _ := base64.StdEncoding.DecodeString(req.Arguments.InputData)
				got <- string(b)
				c.Write([]byte(`{"return": {"pid": 7}}` + "\n"))
			case "guest-exec-status":
				c.Write([]byte(`{"return": {"exited": true, "exitcode": 0, "out-data": "` + base64.StdEncoding.EncodeToString([]byte("ok")) + `"}}` + "\n"))
			}
		}
	}()
}

// A script run over the guest agent starts with the host's time as it is
// sent (what a clone's identity program sets its clock from), then is the
// script unchanged.
func TestGuestRunGivesTheHostsTimeAtTheStart(t *testing.T) {
	dir, err := os.MkdirTemp("", "qga")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	got := make(chan string, 1)
	fakeGuestAgent(t, dir, got)
	d := New(nil, AccelTCG, nil)
	script := "set -e\necho hi\n"
	out, err := d.GuestRun(context.Background(), vm.Spec{Name: "p-1", Dir: dir}, script)
	if err != nil || out != "ok" {
		t.Fatalf("GuestRun: %q %v", out, err)
	}
	sent := <-got
	m := regexp.MustCompile(`^` + vm.HostTimeEnv + `=([0-9]+)\.([0-9]{9}); export ` + vm.HostTimeEnv + "\n").FindStringSubmatch(sent)
	if m == nil || !strings.HasSuffix(sent, "\n"+script) || len(sent) != len(m[0])+len(script) {
		t.Fatalf("the script sent: %q", sent)
	}
	sec, _ := strconv.ParseInt(m[1], 10, 64)
	if d := time.Since(time.Unix(sec, 0)); d < 0 || d > 5*time.Second {
		t.Errorf("the host's time sent is %s old", d)
	}
}
