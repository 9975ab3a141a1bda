package images

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/credentials"
	"oras.land/oras-go/v2/registry/remote/errcode"

	"github.com/agentfleet/agentfleet/internal/layout"
)

// An image travels through an OCI registry as one artifact: its
// manifest.json as the config blob, then one layer per file (the disk
// and every export), each named by its file and digested as the manifest
// says. A pull checks the manifest, every digest and the disk's header
// before anything is stored or promoted.
const (
	ArtifactType    = "application/vnd.agentfleet.image.v1"
	ConfigMediaType = "application/vnd.agentfleet.image.manifest.v1+json"
	DiskMediaType   = "application/vnd.agentfleet.disk.qcow2"
	OutputMediaType = "application/vnd.agentfleet.output"
	// OutputAnnotation names the output kind a layer is (kernel, ova...).
	OutputAnnotation = "dev.agentfleet.output"
)

// ChunkSize is how much of a blob one upload request carries; an upload
// cut off part way resumes from the registry's last acknowledged byte.
var ChunkSize int64 = 64 << 20

// Remote is one repository of a registry.
type Remote struct {
	Ref       registry.Reference
	repo      *remote.Repository
	client    *auth.Client
	plainHTTP bool
	// StateDir keeps the upload URL of each blob being pushed, so an
	// interrupted push resumes.
	StateDir string
	Progress func(format string, args ...any)
}

// OpenRemote prepares ref (host/repository[:tag]). Credentials come from
// the Docker config (DOCKER_CONFIG or ~/.docker/config.json) and its
// credential helpers. Plain HTTP is used for loopback registries or when
// asked.
func OpenRemote(ref string, plainHTTP bool, stateDir string) (*Remote, error) {
	r, err := registry.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("registry reference %q: %w (want host[:port]/repository[:tag])", ref, err)
	}
	repo, err := remote.NewRepository(r.Registry + "/" + r.Repository)
	if err != nil {
		return nil, err
	}
	store, err := credentials.NewStoreFromDocker(credentials.StoreOptions{})
	if err != nil {
		return nil, fmt.Errorf("docker credentials: %w", err)
	}
	client := &auth.Client{Client: http.DefaultClient, Cache: auth.NewCache(), Credential: credentials.Credential(store)}
	client.SetUserAgent("agentfleet")
	repo.Client = client
	repo.PlainHTTP = plainHTTP || IsLoopback(r.Registry)
	return &Remote{Ref: r, repo: repo, client: client, plainHTTP: repo.PlainHTTP, StateDir: stateDir}, nil
}

// IsLoopback reports whether a registry's host[:port] is this machine's
// loopback (localhost or a loopback IP).
func IsLoopback(hostport string) bool {
	h := hostport
	if host, _, err := net.SplitHostPort(hostport); err == nil {
		h = host
	}
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// loginHint turns a refused login into what to do about it.
func (r *Remote) loginHint(err error) error {
	var er *errcode.ErrorResponse
	if errors.Is(err, auth.ErrBasicCredentialNotFound) || (errors.As(err, &er) && er.StatusCode == http.StatusUnauthorized) ||
		strings.Contains(err.Error(), "401 Unauthorized") {
		return fmt.Errorf("%s asks for a login that the Docker config does not have or it refused (docker login %s, or a credential helper in %s): %w",
			r.Ref.Registry, r.Ref.Registry, "DOCKER_CONFIG or ~/.docker/config.json", err)
	}
	return err
}

func (r *Remote) say(format string, args ...any) {
	if r.Progress != nil {
		r.Progress(format, args...)
	}
}

// imageFiles are a stored version's files in push order: the disk, then
// the exports by kind.
func imageFiles(img Image) ([]ocispec.Descriptor, []string, error) {
	var descs []ocispec.Descriptor
	var paths []string
	add := func(path, sum, mediaType, title, kind string, size int64) error {
		if _, err := hex.DecodeString(sum); err != nil || len(sum) != 64 {
			return fmt.Errorf("%s: the manifest has no sha256 for %s", img.Name+"@"+img.Version, title)
		}
		d := ocispec.Descriptor{MediaType: mediaType, Digest: digest.NewDigestFromEncoded(digest.SHA256, sum), Size: size,
			Annotations: map[string]string{ocispec.AnnotationTitle: title}}
		if kind != "" {
			d.Annotations[OutputAnnotation] = kind
		}
		descs, paths = append(descs, d), append(paths, path)
		return nil
	}
	if err := add(img.Disk, img.DiskSHA256, DiskMediaType, DiskFile, "", img.DiskBytes); err != nil {
		return nil, nil, err
	}
	for _, kind := range slices.Sorted(maps.Keys(img.Outputs)) {
		o := img.Outputs[kind]
		if err := add(filepath.Join(img.Dir, o.File), o.SHA256, OutputMediaType, o.File, kind, o.Bytes); err != nil {
			return nil, nil, err
		}
	}
	return descs, paths, nil
}

// Push uploads img and tags it with the reference's tag, or with its
// version and "latest" when the reference has none.
func (r *Remote) Push(ctx context.Context, img Image) (ocispec.Descriptor, error) {
	d, err := r.push(ctx, img)
	if err != nil {
		return d, r.loginHint(err)
	}
	return d, nil
}

// push uploads img and tags it with the reference's tag, or with its
// version and "latest" when the reference has none. Blobs the registry
// has are skipped; a blob cut off part way resumes.
func (r *Remote) push(ctx context.Context, img Image) (ocispec.Descriptor, error) {
	cfg, err := os.ReadFile(filepath.Join(img.Dir, ManifestFile))
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	layers, paths, err := imageFiles(img)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	cfgDesc := ocispec.Descriptor{MediaType: ConfigMediaType, Digest: digest.FromBytes(cfg), Size: int64(len(cfg))}
	if err := r.pushBytes(ctx, cfgDesc, cfg); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("push the manifest: %w", err)
	}
	for i, d := range layers {
		if err := r.pushFile(ctx, d, paths[i]); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("push %s: %w", d.Annotations[ocispec.AnnotationTitle], err)
		}
	}
	man := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		ArtifactType: ArtifactType, Config: cfgDesc, Layers: layers,
		Annotations: map[string]string{"dev.agentfleet.name": img.Name, "dev.agentfleet.version": img.Version, ocispec.AnnotationCreated: img.BuiltAt.UTC().Format("2006-01-02T15:04:05Z")}}
	body, _ := json.Marshal(man)
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(body), Size: int64(len(body)), ArtifactType: ArtifactType}
	tags := []string{r.Ref.Reference}
	if r.Ref.Reference == "" {
		tags = []string{img.Version, "latest"}
	}
	for _, tag := range tags {
		if err := r.repo.PushReference(ctx, desc, bytes.NewReader(body), tag); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("tag %s: %w", tag, err)
		}
	}
	return desc, nil
}

func (r *Remote) pushBytes(ctx context.Context, d ocispec.Descriptor, b []byte) error {
	if ok, err := r.repo.Exists(ctx, d); err == nil && ok {
		return nil
	}
	return r.repo.Push(ctx, d, bytes.NewReader(b))
}

// pushFile uploads one blob in chunks (the distribution API's PATCH with
// Content-Range), recording the upload's URL after each chunk so a later
// push continues where the registry says it stopped.
func (r *Remote) pushFile(ctx context.Context, d ocispec.Descriptor, path string) error {
	title := d.Annotations[ocispec.AnnotationTitle]
	if ok, err := r.repo.Exists(ctx, d); err == nil && ok {
		r.say("%s: already in the registry", title)
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	ctx = auth.AppendRepositoryScope(ctx, r.Ref, auth.ActionPull, auth.ActionPush)
	statePath := filepath.Join(r.StateDir, safeName(r.Ref.Registry+"_"+r.Ref.Repository)+"_"+d.Digest.Encoded())
	location, offset := r.resumeUpload(ctx, statePath)
	if location == "" {
		if location, err = r.startUpload(ctx); err != nil {
			return err
		}
		offset = 0
	} else {
		r.say("%s: resuming at %d MiB", title, offset>>20)
	}
	for offset < d.Size {
		n := min(ChunkSize, d.Size-offset)
		if _, err := f.Seek(offset, io.SeekStart); err != nil {
			return err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPatch, location, io.LimitReader(f, n))
		if err != nil {
			return err
		}
		req.ContentLength = n
		req.Header.Set("Content-Type", "application/octet-stream")
		req.Header.Set("Content-Range", fmt.Sprintf("%d-%d", offset, offset+n-1))
		resp, err := r.client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			os.Remove(statePath)
			return fmt.Errorf("upload chunk at %d: %s", offset, resp.Status)
		}
		if location, err = r.nextLocation(req.URL, resp); err != nil {
			return err
		}
		offset += n
		writeState(statePath, location)
		r.say("%s: %d of %d MiB", title, offset>>20, d.Size>>20)
	}
	u, err := url.Parse(location)
	if err != nil {
		return err
	}
	q := u.Query()
	q.Set("digest", d.Digest.String())
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u.String(), nil)
	if err != nil {
		return err
	}
	req.ContentLength = 0
	resp, err := r.client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	os.Remove(statePath)
	if resp.StatusCode != http.StatusCreated {
		// The registry checks the digest of what it got: a file that
		// changed under the store, or a corrupted transfer, stops here.
		return fmt.Errorf("finish upload: %s", resp.Status)
	}
	return nil
}

func (r *Remote) scheme() string {
	if r.plainHTTP {
		return "http"
	}
	return "https"
}

func (r *Remote) startUpload(ctx context.Context) (string, error) {
	u := fmt.Sprintf("%s://%s/v2/%s/blobs/uploads/", r.scheme(), r.Ref.Host(), r.Ref.Repository)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	if err != nil {
		return "", err
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return "", fmt.Errorf("start upload: %s", resp.Status)
	}
	return r.nextLocation(req.URL, resp)
}

// nextLocation is the upload URL the registry gave, which must stay on
// its own host and scheme: credentials go wherever it points.
func (r *Remote) nextLocation(base *url.URL, resp *http.Response) (string, error) {
	loc, err := base.Parse(resp.Header.Get("Location"))
	if err != nil || resp.Header.Get("Location") == "" {
		return "", fmt.Errorf("the registry gave no upload location")
	}
	if loc.Host != base.Host || loc.Scheme != base.Scheme {
		return "", fmt.Errorf("the registry's upload location %s is not on %s", loc.Host, base.Host)
	}
	return loc.String(), nil
}

// resumeUpload asks the registry how much of a recorded upload it holds.
func (r *Remote) resumeUpload(ctx context.Context, statePath string) (string, int64) {
	b, err := os.ReadFile(statePath)
	if err != nil {
		return "", 0
	}
	location := strings.TrimSpace(string(b))
	u, err := url.Parse(location)
	if err != nil || u.Host != r.Ref.Host() {
		os.Remove(statePath)
		return "", 0
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, location, nil)
	if err != nil {
		return "", 0
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return "", 0
	}
	resp.Body.Close()
	// 204 with Range: 0-N means bytes 0..N arrived.
	rng := strings.TrimPrefix(resp.Header.Get("Range"), "bytes=")
	_, end, ok := strings.Cut(rng, "-")
	n, err := strconv.ParseInt(end, 10, 64)
	if resp.StatusCode != http.StatusNoContent || !ok || err != nil {
		os.Remove(statePath)
		return "", 0
	}
	next, err := r.nextLocation(req.URL, resp)
	if err != nil {
		next = location
	}
	return next, n + 1
}

func writeState(path, location string) {
	os.MkdirAll(filepath.Dir(path), 0o700)
	tmp := path + ".tmp"
	if os.WriteFile(tmp, []byte(location+"\n"), 0o600) == nil {
		os.Rename(tmp, path)
	}
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9._-]`)

func safeName(s string) string { return unsafeChars.ReplaceAllString(s, "_") }

// safeFile is a name a pulled layer may have in a version folder.
var safeFile = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ErrUpToDate says a pull found the image already here.
var ErrUpToDate = errors.New("already here")

// Pull fetches the reference's image into s, checking its manifest's
// fields, every blob's digest and size against the registry's descriptor
// and the image's own manifest, and the disk's qcow2 header (it must name
// no host file), and promotes it only then. A version already here with the
// same disk is ErrUpToDate (promoted if it was not latest).
func (r *Remote) Pull(ctx context.Context, s Store) (Image, error) {
	img, err := r.pull(ctx, s)
	if err != nil && !errors.Is(err, ErrUpToDate) {
		return img, r.loginHint(err)
	}
	return img, err
}

func (r *Remote) pull(ctx context.Context, s Store) (Image, error) {
	tag := r.Ref.Reference
	if tag == "" {
		tag = "latest"
	}
	desc, rc, err := r.repo.FetchReference(ctx, tag)
	if err != nil {
		return Image{}, fmt.Errorf("resolve %s: %w", r.Ref, err)
	}
	body, err := readAllLimited(rc, 4<<20)
	rc.Close()
	if err != nil || digest.FromBytes(body) != desc.Digest {
		return Image{}, fmt.Errorf("%s: the registry's manifest does not match its digest", r.Ref)
	}
	var man ocispec.Manifest
	if err := json.Unmarshal(body, &man); err != nil || man.Config.MediaType != ConfigMediaType {
		return Image{}, fmt.Errorf("%s is not a fleet image (its config is %q)", r.Ref, man.Config.MediaType)
	}
	cfg, err := r.fetchBytes(ctx, man.Config, 1<<20)
	if err != nil {
		return Image{}, fmt.Errorf("fetch the image manifest: %w", err)
	}
	var m Manifest
	if err := json.Unmarshal(cfg, &m); err != nil {
		return Image{}, fmt.Errorf("the image manifest: %w", err)
	}
	// The manifest names folders, links and files here, and is printed:
	// it is checked before anything is written.
	if err := m.Check(); err != nil {
		return Image{}, fmt.Errorf("%s holds an image manifest this fleet does not take: %w", r.Ref, err)
	}
	if have, err := s.load(m.Name, m.Version); err == nil {
		if have.DiskSHA256 != m.DiskSHA256 {
			return Image{}, fmt.Errorf("%s@%s is here already with another disk (sha256 %s, the registry's is %s): remove it first", m.Name, m.Version, short(have.DiskSHA256), short(m.DiskSHA256))
		}
		if !have.Latest {
			if err := s.Promote(m.Name, m.Version); err != nil {
				return Image{}, err
			}
			have.Latest = true
		}
		return have, ErrUpToDate
	}
	if err := checkLayers(man.Layers, m); err != nil {
		return Image{}, fmt.Errorf("%s: %w", r.Ref, err)
	}
	staging := filepath.Join(s.Root, m.Name, layout.PullPrefix+m.Version)
	if err := os.MkdirAll(staging, 0o755); err != nil {
		return Image{}, err
	}
	defer os.RemoveAll(staging)
	extras := map[string]string{}
	var disk string
	for _, l := range man.Layers {
		title := l.Annotations[ocispec.AnnotationTitle]
		dst := filepath.Join(staging, title)
		if err := r.fetchFile(ctx, l, dst); err != nil {
			return Image{}, fmt.Errorf("pull %s: %w", title, err)
		}
		if l.MediaType == DiskMediaType {
			disk = dst
		} else {
			extras[l.Annotations[OutputAnnotation]] = dst
		}
	}
	// The digests say the disk is the one pushed, not that it is safe to
	// use: its header must name no host file (backing file, data file).
	// Each export too, by its kind: a qcow2's header, an OVA's or a box's
	// members, OVF and VMDKs. Nothing is stored otherwise.
	if err := CheckDisk(disk); err != nil {
		return Image{}, fmt.Errorf("pull %s@%s from %s: nothing is promoted: %w", m.Name, m.Version, r.Ref, err)
	}
	for _, kind := range slices.Sorted(maps.Keys(extras)) {
		if err := CheckOutputFile(kind, extras[kind]); err != nil {
			return Image{}, fmt.Errorf("pull %s@%s from %s: nothing is promoted: %w", m.Name, m.Version, r.Ref, err)
		}
	}
	img, err := s.Add(m, disk, extras)
	if err != nil {
		return Image{}, err
	}
	if err := s.Promote(m.Name, m.Version); err != nil {
		return Image{}, err
	}
	img.Latest = true
	return img, nil
}

func short(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

// checkLayers holds the registry's list of blobs against the image's own
// manifest: one disk and exactly the outputs it names, with their digests
// and sizes, and file names that stay in the version folder.
func checkLayers(layers []ocispec.Descriptor, m Manifest) error {
	seen := map[string]bool{}
	disks := 0
	for _, l := range layers {
		title := l.Annotations[ocispec.AnnotationTitle]
		if !safeFile.MatchString(title) || title == ManifestFile || seen[title] {
			return fmt.Errorf("a layer has the file name %q", title)
		}
		seen[title] = true
		want := digest.NewDigestFromEncoded(digest.SHA256, m.DiskSHA256)
		size := m.DiskBytes
		switch l.MediaType {
		case DiskMediaType:
			disks++
			if title != DiskFile {
				return fmt.Errorf("the disk layer is named %q", title)
			}
		case OutputMediaType:
			o, ok := m.Outputs[l.Annotations[OutputAnnotation]]
			if !ok || o.File != title {
				return fmt.Errorf("layer %s is no output the image's manifest names", title)
			}
			want, size = digest.NewDigestFromEncoded(digest.SHA256, o.SHA256), o.Bytes
		default:
			return fmt.Errorf("layer %s has media type %q", title, l.MediaType)
		}
		if l.Digest != want || l.Size != size {
			return fmt.Errorf("layer %s is %s (%d bytes) in the registry but %s (%d bytes) in the image's manifest", title, l.Digest, l.Size, want, size)
		}
	}
	if disks != 1 || len(layers) != 1+len(m.Outputs) {
		return fmt.Errorf("the registry lists %d layers (%d disks) for an image with %d outputs", len(layers), disks, len(m.Outputs))
	}
	return nil
}

func readAllLimited(r io.Reader, max int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, max+1))
	if err == nil && int64(len(b)) > max {
		err = fmt.Errorf("more than %d bytes", max)
	}
	return b, err
}

func (r *Remote) fetchBytes(ctx context.Context, d ocispec.Descriptor, max int64) ([]byte, error) {
	if d.Size > max {
		return nil, fmt.Errorf("%d bytes is too large", d.Size)
	}
	rc, err := r.repo.Blobs().Fetch(ctx, d)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := readAllLimited(rc, d.Size)
	if err != nil {
		return nil, err
	}
	if int64(len(b)) != d.Size || digest.FromBytes(b) != d.Digest {
		return nil, errors.New("its digest does not match")
	}
	return b, nil
}

// fetchFile downloads one blob, hashing as it writes, and keeps it only
// if the digest and size are the ones expected.
func (r *Remote) fetchFile(ctx context.Context, d ocispec.Descriptor, dst string) error {
	rc, err := r.repo.Blobs().Fetch(ctx, d)
	if err != nil {
		return err
	}
	defer rc.Close()
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	h := sha256.New()
	pw := &progressWriter{say: r.say, title: d.Annotations[ocispec.AnnotationTitle], total: d.Size}
	n, err := io.Copy(io.MultiWriter(f, h, pw), io.LimitReader(rc, d.Size+1))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if n != d.Size || "sha256:"+hex.EncodeToString(h.Sum(nil)) != d.Digest.String() {
		os.Remove(dst)
		return fmt.Errorf("its content does not match its digest %s (%d bytes received of %d): nothing is promoted", d.Digest, n, d.Size)
	}
	return nil
}

// OpenBlob streams the blob of sha256 sum (size bytes) from ref's
// repository (host[:port]/repository): each file of an image pushed there
// is a blob under its own digest, so a node can pull a disk, kernel or
// initrd by the digest the controller sends. The reader stops one byte
// past size; the caller checks the digest as it reads.
func OpenBlob(ctx context.Context, ref string, plainHTTP bool, sum string, size int64) (io.ReadCloser, error) {
	if _, err := hex.DecodeString(sum); err != nil || len(sum) != 64 {
		return nil, fmt.Errorf("blob digest %q is not a sha256", sum)
	}
	r, err := OpenRemote(ref, plainHTTP, "")
	if err != nil {
		return nil, err
	}
	d := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.NewDigestFromEncoded(digest.SHA256, sum), Size: size}
	rc, err := r.repo.Blobs().Fetch(ctx, d)
	if err != nil {
		var er *errcode.ErrorResponse
		if errors.Is(err, errdef.ErrNotFound) || (errors.As(err, &er) && er.StatusCode == http.StatusNotFound) {
			return nil, fmt.Errorf("%s has no blob %s: push the image there first (fleet image push IMAGE %s)", ref, d.Digest, ref)
		}
		return nil, r.loginHint(err)
	}
	return struct {
		io.Reader
		io.Closer
	}{io.LimitReader(rc, size+1), rc}, nil
}

type progressWriter struct {
	say          func(string, ...any)
	title        string
	total, done  int64
	lastReported int64
}

func (p *progressWriter) Write(b []byte) (int, error) {
	p.done += int64(len(b))
	if p.done-p.lastReported >= 256<<20 || p.done == p.total {
		p.lastReported = p.done
		p.say("%s: %d of %d MiB", p.title, p.done>>20, p.total>>20)
	}
	return len(b), nil
}
