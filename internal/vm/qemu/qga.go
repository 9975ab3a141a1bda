package qemu

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"time"

	"github.com/agentfleet/agentfleet/internal/vm"
)

// The QEMU guest agent speaks QMP-style JSON over a virtio-serial port: a
// channel only the host reaches, open before the guest uses its network.
// It is how a clone restored from a warm template gets its own identity.

type qgaConn struct {
	conn net.Conn
	r    *bufio.Reader
}

// dialQGA connects to a machine's guest agent and synchronizes with it
// (guest-sync-delimited), so a reply left from an earlier client is never
// taken for ours. It waits for the agent until ctx ends.
func dialQGA(ctx context.Context, dir string) (*qgaConn, error) {
	var last error
	for {
		q, err := tryQGA(ctx, dir)
		if err == nil {
			return q, nil
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("the guest agent does not answer (is qemu-guest-agent in the image?): %v", last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func tryQGA(ctx context.Context, dir string) (*qgaConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", qgaPath(dir))
	if err != nil {
		return nil, err
	}
	q := &qgaConn{conn: c, r: bufio.NewReader(c)}
	id := rand.Int64N(1 << 40)
	c.SetDeadline(time.Now().Add(3 * time.Second))
	req, _ := json.Marshal(map[string]any{"execute": "guest-sync-delimited", "arguments": map[string]any{"id": id}})
	if _, err := c.Write(append(append([]byte{0xff}, req...), '\n')); err != nil {
		c.Close()
		return nil, err
	}
	// The agent answers with 0xff, then the id.
	for {
		b, err := q.r.ReadByte()
		if err != nil {
			c.Close()
			return nil, err
		}
		if b == 0xff {
			break
		}
	}
	for {
		var r struct {
			Return *int64 `json:"return"`
		}
		line, err := q.r.ReadBytes('\n')
		if err != nil {
			c.Close()
			return nil, err
		}
		if json.Unmarshal(line, &r) == nil && r.Return != nil && *r.Return == id {
			return q, nil
		}
	}
}

func (q *qgaConn) Close() error { return q.conn.Close() }

func (q *qgaConn) execute(cmd string, args any, out any) error {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	q.conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("guest agent %s: %w", cmd, err)
	}
	line, err := q.r.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("guest agent %s: %w", cmd, err)
	}
	var r struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal(line, &r); err != nil {
		return fmt.Errorf("guest agent %s: %w", cmd, err)
	}
	if r.Error != nil {
		return fmt.Errorf("guest agent %s: %s", cmd, r.Error.Desc)
	}
	if out != nil {
		return json.Unmarshal(r.Return, out)
	}
	return nil
}

// GuestRun runs script with /bin/sh as root in the guest, through the
// guest agent, and returns its output; a non-zero exit is an error that
// carries the output.
func (d *Driver) GuestRun(ctx context.Context, s vm.Spec, script string) (string, error) {
	t0 := time.Now()
	q, err := dialQGA(ctx, s.Dir)
	if err != nil {
		return "", fmt.Errorf("%s: %w", s.Name, err)
	}
	defer q.Close()
	d.Log.Debug("guest agent connected", "vm", s.Name, "after", time.Since(t0))
	defer func() { d.Log.Debug("guest agent script done", "vm", s.Name, "after", time.Since(t0)) }()
	var started struct {
		PID int `json:"pid"`
	}
	// The host's time as the script starts, for a clone's identity
	// program (vm.HostTimeEnv): fresher than any the script was made with.
	now := time.Now()
	script = fmt.Sprintf("%s=%d.%09d; export %s\n", vm.HostTimeEnv, now.Unix(), now.Nanosecond(), vm.HostTimeEnv) + script
	if err := q.execute("guest-exec", map[string]any{
		"path": "/bin/sh", "arg": []string{"-s"},
		"input-data":     base64.StdEncoding.EncodeToString([]byte(script)),
		"capture-output": true,
	}, &started); err != nil {
		return "", fmt.Errorf("%s: %w", s.Name, err)
	}
	// Polls come quickly at first and then less often: each is work for
	// the guest's agent (and its log) under emulation, where a clone's
	// identity script takes about a second.
	poll := 20 * time.Millisecond
	for {
		var st struct {
			Exited   bool   `json:"exited"`
			ExitCode int    `json:"exitcode"`
			OutData  string `json:"out-data"`
			ErrData  string `json:"err-data"`
		}
		if err := q.execute("guest-exec-status", map[string]any{"pid": started.PID}, &st); err != nil {
			return "", fmt.Errorf("%s: %w", s.Name, err)
		}
		if st.Exited {
			out, _ := base64.StdEncoding.DecodeString(st.OutData)
			errOut, _ := base64.StdEncoding.DecodeString(st.ErrData)
			if st.ExitCode != 0 {
				return string(out), &ScriptExit{Code: st.ExitCode, msg: fmt.Sprintf("%s: guest script exited %d: %s", s.Name, st.ExitCode, tail(string(errOut)+string(out)))}
			}
			return string(out), nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(poll):
		}
		poll = min(2*poll, 200*time.Millisecond)
	}
}

func tail(s string) string {
	if len(s) > 2000 {
		s = "..." + s[len(s)-2000:]
	}
	return s
}

// ScriptExit is a guest-agent script that ran and exited non-zero (not a
// channel that failed): its ExitCode is what the guest runner reports.
type ScriptExit struct {
	Code int
	msg  string
}

func (e *ScriptExit) Error() string { return e.msg }

// ExitCode is the script's exit status.
func (e *ScriptExit) ExitCode() int { return e.Code }
