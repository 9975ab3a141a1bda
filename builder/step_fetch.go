package builder

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/agentfleet/agentfleet/internal/qcow2"
	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// StepFetchSource downloads the cloud image named by CloudImageURL, with
// progress and resume, verifies it against the digest its SHA256SUMS
// file lists, and checks its qcow2 header (a standalone disk: no backing
// or data file). Verified images are cached by digest, so a second build
// of the same source downloads nothing.
//
// Reads "config", "workdir". Writes "source_image", "source_digest". No
// cleanup: a partial download is kept (as .part) to resume next time, a
// file that fails its checksum or its qcow2 header check is deleted at
// once.
type StepFetchSource struct {
	Client *http.Client // nil: http.DefaultClient
}

func (s *StepFetchSource) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	cfg := state.Get("config").(*Config)
	client := s.Client
	if client == nil {
		client = http.DefaultClient
	}
	sums, err := httpGet(ctx, client, cfg.ChecksumURL)
	if err != nil {
		return halt(state, fmt.Errorf("source unreachable: %w", err))
	}
	file := path.Base(cfg.CloudImageURL)
	want, err := FindChecksum(sums, file)
	if err != nil {
		return halt(state, fmt.Errorf("%s: %w", cfg.ChecksumURL, err))
	}
	dir := filepath.Join(cfg.CacheDir, "sources")
	if cfg.CacheDir == "" {
		dir = state.Get("workdir").(string)
	}
	if err := ensureDir(dir); err != nil {
		return halt(state, err)
	}
	dst := filepath.Join(dir, "sha256-"+want+".img")
	if fileExists(dst) {
		cfg.say("source %s: cached (sha256 %s)", file, want[:12])
	} else if err := download(ctx, client, cfg, cfg.CloudImageURL, dst, want); err != nil {
		return halt(state, err)
	}
	// The checksum says the file is the one listed, not that it is safe
	// to boot: a header naming a backing or data file would have the build
	// VM read a host file. Checked on every build, cached or not.
	if _, err := qcow2.Check(dst, qcow2.Expect{Format: qcow2.QCOW2}); err != nil {
		os.Remove(dst)
		return halt(state, fmt.Errorf("source %s (deleted): %w", file, err))
	}
	state.Put("source_image", dst)
	state.Put("source_digest", "sha256:"+want)
	return multistep.ActionContinue
}

func (s *StepFetchSource) Cleanup(multistep.StateBag) {}

// FindChecksum returns the hex SHA-256 that a SHA256SUMS file lists for
// file ("<hex> *file" or "<hex>  file").
func FindChecksum(sums []byte, file string) (string, error) {
	sc := bufio.NewScanner(bytes.NewReader(sums))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 2 && strings.TrimPrefix(fields[1], "*") == file && len(fields[0]) == 64 {
			if _, err := hex.DecodeString(fields[0]); err == nil {
				return strings.ToLower(fields[0]), nil
			}
		}
	}
	return "", fmt.Errorf("no SHA-256 listed for %s", file)
}

// download fetches url into dst via dst.part, resuming a partial file with
// a Range request, and keeps it only if its digest is want.
func download(ctx context.Context, client *http.Client, cfg *Config, url, dst, want string) error {
	part := dst + ".part"
	f, err := os.OpenFile(part, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	have, _ := f.Seek(0, io.SeekEnd)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if have > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", have))
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("source unreachable: %w", err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusPartialContent && have > 0:
		cfg.say("resuming %s at %d MiB", path.Base(url), have>>20)
	case resp.StatusCode == http.StatusOK:
		have = 0
		if err := f.Truncate(0); err != nil {
			return err
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return err
		}
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable:
		// The part is already whole (or longer than the file): check it.
	default:
		return fmt.Errorf("download %s: %s", url, resp.Status)
	}
	total := have + resp.ContentLength
	pw := &progressWriter{cfg: cfg, name: path.Base(url), done: have, total: total, last: time.Now()}
	if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		if _, err := io.Copy(io.MultiWriter(f, pw), resp.Body); err != nil {
			return fmt.Errorf("download %s (kept %d MiB to resume): %w", url, pw.done>>20, err)
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	got, _, err := sha256File(part)
	if err != nil {
		return err
	}
	if got != want {
		os.Remove(part)
		return fmt.Errorf("checksum mismatch for %s: SHA256SUMS says %s, downloaded file is %s (deleted)", path.Base(url), want, got)
	}
	cfg.say("downloaded %s (%d MiB), sha256 verified", path.Base(url), pw.done>>20)
	return os.Rename(part, dst)
}

// progressWriter reports a download's progress about once a second.
type progressWriter struct {
	cfg         *Config
	name        string
	done, total int64
	last        time.Time
}

func (p *progressWriter) Write(b []byte) (int, error) {
	p.done += int64(len(b))
	if time.Since(p.last) >= time.Second {
		p.last = time.Now()
		if p.total > 0 {
			p.cfg.say("downloading %s: %d/%d MiB (%d%%)", p.name, p.done>>20, p.total>>20, p.done*100/p.total)
		} else {
			p.cfg.say("downloading %s: %d MiB", p.name, p.done>>20)
		}
	}
	return len(b), nil
}
