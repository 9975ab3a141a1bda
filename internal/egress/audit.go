package egress

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"github.com/agentfleet/agentfleet/internal/layout"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// AuditFile is the per-machine log of every egress and credential decision,
// one JSON object per line.
const AuditFile = layout.AuditFile

// An entry's proxy and verdict: the words the audit log is read by.
const (
	ProxyEgress      = "egress"
	ProxyCredentials = "credentials"
	VerdictAllow     = "allow"
	VerdictDeny      = "deny"
)

// Entry is one decision.
type Entry struct {
	Time    time.Time `json:"time"`
	Proxy   string    `json:"proxy"`   // ProxyEgress or ProxyCredentials
	Verdict string    `json:"verdict"` // VerdictAllow or VerdictDeny
	Method  string    `json:"method,omitempty"`
	Host    string    `json:"host,omitempty"`
	Port    int       `json:"port,omitempty"`
	Addr    string    `json:"addr,omitempty"` // the address connected to
	SNI     string    `json:"sni,omitempty"`
	Path    string    `json:"path,omitempty"`
	Status  int       `json:"status,omitempty"`
	Reason  string    `json:"reason"`
}

// Refused says the entry is a refusal.
func (e Entry) Refused() bool { return e.Verdict == VerdictDeny }

// BudgetReached says the entry is a model call the credential proxy
// refused because the machine's budget is spent.
func (e Entry) BudgetReached() bool {
	return e.Proxy == ProxyCredentials && e.Verdict == VerdictDeny && strings.HasPrefix(e.Reason, BudgetReason)
}

// String renders an entry for `fleet net log`. Every field is escaped
// again, so even a log written by an older fleet cannot reach the terminal
// with a control byte.
func (e Entry) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %-5s %-11s", e.Time.Local().Format("15:04:05"), printable(e.Verdict), printable(e.Proxy))
	if e.Method != "" {
		b.WriteString(" " + printable(e.Method))
	}
	if e.Host != "" {
		fmt.Fprintf(&b, " %s", printable(e.Host))
		if e.Port != 0 {
			fmt.Fprintf(&b, ":%d", e.Port)
		}
	}
	if e.SNI != "" {
		b.WriteString(" sni=" + printable(e.SNI))
	}
	if e.Path != "" {
		b.WriteString(" " + printable(e.Path))
	}
	if e.Addr != "" {
		b.WriteString(" -> " + printable(e.Addr))
	}
	if e.Status != 0 {
		fmt.Fprintf(&b, " %d", e.Status)
	}
	b.WriteString(": " + escapeControls(e.Reason))
	return b.String()
}

// escapeControls keeps text readable but makes control bytes visible.
func escapeControls(s string) string {
	if !strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return s
	}
	q := strconv.Quote(s)
	return q[1 : len(q)-1]
}

// DefaultAuditMax is the size at which a machine's log rotates; one older
// file is kept, so a machine's logs hold at most twice this.
const DefaultAuditMax = 8 << 20

// maxField caps every string an entry carries: guest strings are cut and
// escaped where they are read, and this bounds whatever else joins them.
const maxField = 512

// Audit appends entries to a machine's log, rotating it to egress.log.1 at
// MaxBytes. One proxy process per machine writes it; the mutex keeps its
// connections' entries whole and the rotation single.
type Audit struct {
	path     string
	now      func() time.Time
	MaxBytes int64
	mu       sync.Mutex
}

// NewAudit logs into dir/egress.log.
func NewAudit(dir string) *Audit {
	return &Audit{path: filepath.Join(dir, AuditFile), now: time.Now, MaxBytes: DefaultAuditMax}
}

// Log records e, stamping its time. A log that cannot be written must not
// turn into an open door, so callers deny when Log fails for an allow.
func (a *Audit) Log(e Entry) error {
	if a == nil {
		return nil
	}
	e.Time = a.now().UTC()
	for _, f := range []*string{&e.Proxy, &e.Verdict, &e.Method, &e.Host, &e.Addr, &e.SNI, &e.Path, &e.Reason} {
		if len(*f) > maxField {
			*f = (*f)[:maxField] + "..."
		}
	}
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	a.mu.Lock()
	defer a.mu.Unlock()
	if fi, err := os.Stat(a.path); err == nil && a.MaxBytes > 0 && fi.Size()+int64(len(b)) > a.MaxBytes {
		if err := os.Rename(a.path, a.path+".1"); err != nil {
			return err
		}
	}
	f, err := os.OpenFile(a.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// maxLine is the longest log line Tail passes on; Log never writes one
// near it, so a longer one is not the proxy's and is skipped.
const maxLine = 64 << 10

// Tail calls fn with each whole line of a machine's log, the rotated file
// first, reading as it goes (never the whole file at once). With follow it
// then waits for more, across rotations, until ctx ends.
func Tail(ctx context.Context, dir string, follow bool, poll time.Duration, fn func(line []byte) error) error {
	path := filepath.Join(dir, AuditFile)
	if err := tailFile(path+".1", fn); err != nil {
		return err
	}
	f, err := os.Open(path)
	for err != nil {
		if !os.IsNotExist(err) {
			return err
		}
		if !follow || !pause(ctx, poll) {
			return nil
		}
		f, err = os.Open(path)
	}
	defer func() { f.Close() }()
	lr := &lineReader{r: bufio.NewReaderSize(f, 32<<10)}
	for {
		if err := lr.each(fn); err != nil {
			return err
		}
		if !follow || !pause(ctx, poll) {
			return nil
		}
		// Rotated: finish the old file, then start the new one from its top.
		if cur, err := os.Stat(path); err == nil {
			if old, err := f.Stat(); err == nil && !os.SameFile(old, cur) {
				if err := lr.each(fn); err != nil {
					return err
				}
				nf, err := os.Open(path)
				if err != nil {
					continue
				}
				f.Close()
				f, lr = nf, &lineReader{r: bufio.NewReaderSize(nf, 32<<10)}
			}
		}
	}
}

// pause waits d, or reports false when ctx ends first.
func pause(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

func tailFile(path string, fn func([]byte) error) error {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	return (&lineReader{r: bufio.NewReaderSize(f, 32<<10)}).each(fn)
}

// lineReader hands out whole lines and keeps a partial last line (one a
// proxy is still writing) for the next call.
type lineReader struct {
	r       *bufio.Reader
	partial []byte
	skip    bool // inside an over-long line
}

func (l *lineReader) each(fn func([]byte) error) error {
	for {
		chunk, err := l.r.ReadSlice('\n')
		if len(chunk) > 0 {
			whole := chunk[len(chunk)-1] == '\n'
			switch {
			case l.skip:
			case len(l.partial)+len(chunk) > maxLine:
				l.partial, l.skip = nil, true
			case whole && len(l.partial) == 0:
				if err := fn(chunk); err != nil {
					return err
				}
			default:
				l.partial = append(l.partial, chunk...)
				if whole {
					if err := fn(l.partial); err != nil {
						return err
					}
					l.partial = l.partial[:0]
				}
			}
			if whole {
				l.skip = false
			}
		}
		switch {
		case err == nil, err == bufio.ErrBufferFull:
		case err == io.EOF:
			return nil
		default:
			return err
		}
	}
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
