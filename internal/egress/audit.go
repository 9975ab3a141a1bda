package egress

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// AuditFile is the per-machine log of every egress and credential decision,
// one JSON object per line.
const AuditFile = "egress.log"

// Entry is one decision.
type Entry struct {
	Time    time.Time `json:"time"`
	Proxy   string    `json:"proxy"`   // "egress" or "credentials"
	Verdict string    `json:"verdict"` // "allow" or "deny"
	Method  string    `json:"method,omitempty"`
	Host    string    `json:"host,omitempty"`
	Port    int       `json:"port,omitempty"`
	Addr    string    `json:"addr,omitempty"` // the address connected to
	SNI     string    `json:"sni,omitempty"`
	Path    string    `json:"path,omitempty"`
	Status  int       `json:"status,omitempty"`
	Reason  string    `json:"reason"`
}

// String renders an entry for `fleet net log`.
func (e Entry) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %-5s %-11s", e.Time.Local().Format("15:04:05"), e.Verdict, e.Proxy)
	if e.Method != "" {
		b.WriteString(" " + e.Method)
	}
	if e.Host != "" {
		fmt.Fprintf(&b, " %s", e.Host)
		if e.Port != 0 {
			fmt.Fprintf(&b, ":%d", e.Port)
		}
	}
	if e.Path != "" {
		b.WriteString(" " + e.Path)
	}
	if e.Addr != "" {
		b.WriteString(" -> " + e.Addr)
	}
	if e.Status != 0 {
		fmt.Fprintf(&b, " %d", e.Status)
	}
	b.WriteString(": " + e.Reason)
	return b.String()
}

// Audit appends entries to a machine's log. Many proxy processes append to
// one file at once; each entry is a single O_APPEND write, which Linux does
// not interleave.
type Audit struct {
	path string
	now  func() time.Time
}

// NewAudit logs into dir/egress.log.
func NewAudit(dir string) *Audit {
	return &Audit{path: filepath.Join(dir, AuditFile), now: time.Now}
}

// Log records e, stamping its time. A log that cannot be written must not
// turn into an open door, so callers deny when Log fails for an allow.
func (a *Audit) Log(e Entry) error {
	if a == nil {
		return nil
	}
	e.Time = a.now().UTC()
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(a.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// ReadEntries parses a log, skipping lines it cannot read (a line being
// written as the file is read).
func ReadEntries(r io.Reader, fn func(Entry)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var e Entry
		if json.Unmarshal(sc.Bytes(), &e) == nil {
			fn(e)
		}
	}
	return sc.Err()
}
