package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"time"
)

// qmpReplyTimeout bounds one QMP connection's exchange.
var qmpReplyTimeout = 10 * time.Second

// qmpConn is a minimal QMP client: one command at a time, events skipped.
type qmpConn struct {
	conn net.Conn
	r    *bufio.Reader
}

func dialQMP(ctx context.Context, socket string) (*qmpConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("connect QMP %s: %w", socket, err)
	}
	deadline := time.Now().Add(qmpReplyTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = c.SetDeadline(deadline)
	q := &qmpConn{conn: c, r: bufio.NewReader(c)}
	var greeting struct {
		QMP json.RawMessage `json:"QMP"`
	}
	if err := q.read(&greeting); err != nil {
		c.Close()
		return nil, fmt.Errorf("QMP greeting on %s: %w", socket, err)
	} else if greeting.QMP == nil {
		c.Close()
		return nil, fmt.Errorf("QMP greeting on %s: not a QMP greeting", socket)
	}
	if _, err := q.execute("qmp_capabilities", nil); err != nil {
		c.Close()
		return nil, err
	}
	return q, nil
}

func (q *qmpConn) Close() error { return q.conn.Close() }

func (q *qmpConn) read(v any) error {
	line, err := q.r.ReadBytes('\n')
	if err != nil {
		return err
	}
	return json.Unmarshal(line, v)
}

type qmpReply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string `json:"event"`
}

// execute runs one command and returns its "return" value.
func (q *qmpConn) execute(cmd string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("QMP %s: %w", cmd, err)
	}
	for {
		var r qmpReply
		if err := q.read(&r); err != nil {
			return nil, fmt.Errorf("QMP %s: %w", cmd, err)
		}
		if r.Event != "" {
			continue
		}
		if r.Error != nil {
			return nil, fmt.Errorf("QMP %s: %s: %s", cmd, r.Error.Class, r.Error.Desc)
		}
		return r.Return, nil
	}
}

// status returns the VM run state ("running", "paused", "shutdown", ...).
func (q *qmpConn) status() (string, error) {
	raw, err := q.execute("query-status", nil)
	if err != nil {
		return "", err
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return "", err
	}
	return st.Status, nil
}

// hostFwdRe matches the SSH forward in "info usernet", e.g.
//
//	TCP[HOST_FORWARD]  12       127.0.0.1 35323       10.0.2.15    22
var hostFwdRe = regexp.MustCompile(`TCP\[HOST_FORWARD\]\s+\d+\s+127\.0\.0\.1\s+(\d+)\s+\S+\s+22\b`)

// parseHostFwdPort extracts the host port forwarded to guest port 22.
func parseHostFwdPort(usernet string) (int, bool) {
	m := hostFwdRe.FindStringSubmatch(usernet)
	if m == nil {
		return 0, false
	}
	p, err := strconv.Atoi(m[1])
	return p, err == nil && p > 0
}

// sshPort reads back the host port QEMU bound for the SSH forward. There is
// no stable QMP command for it, so this asks the human monitor.
func (q *qmpConn) sshPort() (int, error) {
	var last string
	for i := 0; i < 50; i++ {
		raw, err := q.execute("human-monitor-command", map[string]string{"command-line": "info usernet"})
		if err != nil {
			return 0, err
		}
		_ = json.Unmarshal(raw, &last)
		if p, ok := parseHostFwdPort(last); ok {
			return p, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return 0, fmt.Errorf("no SSH port forward in QEMU's user network: %q", last)
}
