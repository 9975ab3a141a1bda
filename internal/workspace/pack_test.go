package workspace

import (
	"bytes"
	"compress/zlib"
	"context"
	"crypto/sha1"
	"encoding/binary"
	"errors"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/internal/execx"
)

// A pack built by hand, as a hostile VM would: the header, each object's
// type-and-size varint, its zlib stream, and the SHA-1 trailer.

func objHeader(typ int, size int64) []byte {
	c := byte(typ<<4) | byte(size&15)
	size >>= 4
	var out []byte
	for size > 0 {
		out = append(out, c|0x80)
		c = byte(size & 0x7f)
		size >>= 7
	}
	return append(out, c)
}

func sizeVarint(n int64) []byte {
	var out []byte
	for {
		c := byte(n & 0x7f)
		n >>= 7
		if n == 0 {
			return append(out, c)
		}
		out = append(out, c|0x80)
	}
}

// deflate compresses n bytes that gen writes, without holding them.
func deflate(t testing.TB, gen func(w io.Writer)) []byte {
	var b bytes.Buffer
	zw, _ := zlib.NewWriterLevel(&b, zlib.BestCompression)
	gen(zw)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func zeros(n int64) func(io.Writer) {
	return func(w io.Writer) {
		buf := make([]byte, 1<<20)
		for ; n > 0; n -= int64(len(buf)) {
			w.Write(buf[:min(n, int64(len(buf)))])
		}
	}
}

func data(b []byte) func(io.Writer) { return func(w io.Writer) { w.Write(b) } }

func packOf(objs ...[]byte) []byte {
	var b bytes.Buffer
	b.WriteString("PACK")
	binary.Write(&b, binary.BigEndian, uint32(2))
	binary.Write(&b, binary.BigEndian, uint32(len(objs)))
	for _, o := range objs {
		b.Write(o)
	}
	sum := sha1.Sum(b.Bytes())
	b.Write(sum[:])
	return b.Bytes()
}

func blobObj(t testing.TB, size int64, gen func(io.Writer)) []byte {
	return append(objHeader(objBlob, size), deflate(t, gen)...)
}

// ofsDelta is an OFS_DELTA on the object back bytes before it whose delta
// says base and result sizes and copies 64 KiB from the base copies times
// (a one-byte instruction each: 0x80, offset 0, size 0 meaning 0x10000).
func ofsDelta(t testing.TB, back int64, base, result int64, copies int) []byte {
	delta := append(sizeVarint(base), sizeVarint(result)...)
	delta = append(delta, bytes.Repeat([]byte{0x80}, copies)...)
	h := objHeader(objOfsDelta, int64(len(delta)))
	// The offset encoding git uses for OFS_DELTA.
	off := []byte{byte(back & 0x7f)}
	for back >>= 7; back > 0; back >>= 7 {
		back--
		off = append([]byte{0x80 | byte(back&0x7f)}, off...)
	}
	return append(append(h, off...), deflate(t, data(delta))...)
}

func repeat(b []byte, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = b
	}
	return out
}

// countingReader counts what the checker took from the VM's stream.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func roomy() Limits {
	return Limits{Pack: 1 << 30, Objects: 1 << 20, Blob: 1 << 40, Object: 1 << 40, Total: 1 << 50}
}

func TestCheckPackRefusesObjectsThatInflatePastTheCaps(t *testing.T) {
	small := Limits{Pack: 64 << 20, Objects: 1000, Blob: 1 << 20, Object: 1 << 20, Total: 4 << 20}
	base := blobObj(t, 64<<10, zeros(64<<10))
	for _, tc := range []struct {
		name, want string
		pack       []byte
		l          Limits
	}{
		// A 64 MiB blob of zeros: about 64 KiB on the wire.
		{"a blob declared past the blob cap", "a blob) to 64 MiB", packOf(blobObj(t, 64<<20, zeros(64<<20))), small},
		// The attack: a few hundred bytes whose delta resolves to 4 GiB.
		{"a delta whose result is past the object cap", "a delta's result", packOf(base, ofsDelta(t, int64(len(base)), 64<<10, 4<<30, 65536)), small},
		{"a delta on a base past the object cap", "a delta's base", packOf(base, ofsDelta(t, int64(len(base)), 2<<20, 64<<10, 1)), small},
		{"a commit past the object cap", "commit, tree or tag", packOf(append(objHeader(objCommit, 2<<20), deflate(t, zeros(2<<20))...)), small},
		{"blobs together past the total", "together", packOf(blobObj(t, 1<<20, zeros(1<<20)), blobObj(t, 1<<20, zeros(1<<20)), blobObj(t, 1<<20, zeros(1<<20)),
			blobObj(t, 1<<20, zeros(1<<20)), blobObj(t, 1<<20, zeros(1<<20))), small},
		{"more objects than allowed", "objects, more than", packOf(repeat(blobObj(t, 0, zeros(0)), 1001)...), small},
		{"a count in the header past the cap", "objects, more than", append([]byte("PACK\x00\x00\x00\x02\xff\xff\xff\xff"), make([]byte, 20)...), roomy()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			err := checkPack(bytes.NewReader(tc.pack), &out, tc.l, 20)
			if !errors.Is(err, ErrTooLarge) || !errors.Is(err, ErrInflate) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want ErrInflate about %q", err, tc.want)
			}
			if bytes.HasSuffix(tc.pack, out.Bytes()[max(0, out.Len()-20):]) && out.Len() == len(tc.pack) {
				t.Fatal("the whole pack, trailer and all, went on to index-pack")
			}
			// With room, the same pack is read to its end: it was refused for its sizes.
			if tc.l != roomy() {
				if err := checkPack(bytes.NewReader(tc.pack), io.Discard, roomy(), 20); err != nil {
					t.Fatalf("with room: %v", err)
				}
			}
		})
	}
}

// A header that lies low: the checker inflates no more than it declares
// (plus one byte), so 256 MiB of zeros behind a 1 KiB header cost the
// host a few KiB of the stream, not the stream's worth of inflation.
func TestCheckPackStopsInflatingAtTheDeclaredSize(t *testing.T) {
	pack := packOf(blobObj(t, 1024, zeros(256<<20)))
	if len(pack) < 200<<10 {
		t.Fatalf("the bomb is only %d bytes: zlib changed?", len(pack))
	}
	src := &countingReader{r: bytes.NewReader(pack)}
	err := checkPack(src, io.Discard, roomy(), 20)
	if !errors.Is(err, ErrInflate) || !strings.Contains(err.Error(), "other than the 1024 bytes") {
		t.Fatalf("got %v", err)
	}
	if src.n > 2*passChunk {
		t.Fatalf("read %d KiB of a %d KiB stream: the checker inflated past the declared size", src.n>>10, len(pack)>>10)
	}
	// And one that lies high: fewer bytes than declared.
	err = checkPack(bytes.NewReader(packOf(blobObj(t, 4096, zeros(100)))), io.Discard, roomy(), 20)
	if !errors.Is(err, ErrInflate) {
		t.Fatalf("short object: %v", err)
	}
}

// Until an object's header has passed, index-pack sees none of it: a
// refused first object leaves index-pack with the pack's header (its
// object count checked) and nothing else, so it allocates nothing for it.
func TestCheckPackHoldsEachHeaderUntilItPasses(t *testing.T) {
	var out bytes.Buffer
	err := checkPack(bytes.NewReader(packOf(blobObj(t, 64<<20, zeros(64<<20)))), &out, Limits{Pack: 1 << 30, Objects: 10, Blob: 1 << 20, Object: 1 << 20, Total: 1 << 30}, 20)
	if err == nil || out.Len() != 12 {
		t.Fatalf("err %v, %d bytes passed on, want the 12 of the pack header", err, out.Len())
	}
	ok := blobObj(t, 5, data([]byte("hello")))
	out.Reset()
	err = checkPack(bytes.NewReader(packOf(ok, blobObj(t, 64<<20, zeros(64<<20)))), &out, Limits{Pack: 1 << 30, Objects: 10, Blob: 1 << 20, Object: 1 << 20, Total: 1 << 30}, 20)
	if err == nil || out.Len() != 12+len(ok) {
		t.Fatalf("err %v: %d bytes passed on, want the header and the first object (%d)", err, out.Len(), 12+len(ok))
	}
}

func TestCheckPackRefusesMalformedStreamsWithoutPanicking(t *testing.T) {
	good := packOf(blobObj(t, 5, data([]byte("hello"))), blobObj(t, 64<<10, zeros(64<<10)))
	good = append(good[:0:0], good...)
	base := blobObj(t, 64<<10, zeros(64<<10))
	delta := packOf(base, ofsDelta(t, int64(len(base)), 64<<10, 128<<10, 2))
	for _, p := range [][]byte{good, delta} {
		if err := checkPack(bytes.NewReader(p), io.Discard, roomy(), 20); err != nil {
			t.Fatalf("a well-formed pack: %v", err)
		}
		// Cut at every length: an error each time, never a panic or a pass.
		for n := 0; n < len(p); n++ {
			if err := checkPack(bytes.NewReader(p[:n]), io.Discard, roomy(), 20); err == nil {
				t.Fatalf("a pack cut at %d of %d bytes passed", n, len(p))
			}
		}
	}
	for name, p := range map[string][]byte{
		"not a pack":     []byte("GIT\x00\x00\x00\x00\x02\x00\x00\x00\x01"),
		"version 9":      []byte("PACK\x00\x00\x00\x09\x00\x00\x00\x01"),
		"type 5":         packOf(append(objHeader(5, 1), deflate(t, data([]byte("x")))...)),
		"size varint":    packOf(append(bytes.Repeat([]byte{0xbf}, 12), 0x01)),
		"offset varint":  packOf(append(objHeader(objOfsDelta, 4), bytes.Repeat([]byte{0xff}, 12)...)),
		"delta varint":   packOf(append(append(objHeader(objOfsDelta, 12), 1), deflate(t, data(bytes.Repeat([]byte{0xff}, 12)))...)),
		"not zlib":       packOf(append(objHeader(objBlob, 5), []byte("hello, not zlib")...)),
		"zlib checksum":  packOf(func() []byte { o := blobObj(t, 5, data([]byte("hello"))); o[len(o)-1] ^= 1; return o }()),
		"no trailer":     packOf(blobObj(t, 5, data([]byte("hello"))))[:12+len(blobObj(t, 5, data([]byte("hello"))))],
		"larger on wire": packOf(blobObj(t, 1<<20, zeros(1<<20)))[:0],
	} {
		if err := checkPack(bytes.NewReader(p), io.Discard, roomy(), 20); err == nil {
			t.Errorf("%s: passed", name)
		}
	}
	// Past the byte cap: ErrTooLarge, as before.
	big := packOf(blobObj(t, 64<<10, func(w io.Writer) { w.Write(bytes.Repeat([]byte("abcdefghij"), 64<<10/10+1)[:64<<10]) }))
	l := roomy()
	l.Pack = int64(len(big)) - 1
	if err := checkPack(bytes.NewReader(big), io.Discard, l, 20); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "pack is larger") {
		t.Fatalf("byte cap: %v", err)
	}
	l.Pack = int64(len(big))
	if err := checkPack(bytes.NewReader(big), io.Discard, l, 20); err != nil {
		t.Fatalf("a pack of exactly the cap: %v", err)
	}
}

// Packs git itself writes, with OFS and REF deltas and in SHA-256
// repositories, pass through unchanged, byte for byte.
func TestCheckPackPassesGitsOwnPacksUnchanged(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	for _, format := range []string{"sha1", "sha256"} {
		dir := t.TempDir()
		run(t, dir, nil, "git", "init", "-q", "--object-format="+format)
		var lines []string
		for i := 0; i < 400; i++ {
			lines = append(lines, strings.Repeat("line of text ", 5)+string(rune('a'+i%26)))
		}
		for c := 0; c < 6; c++ {
			lines[c*50] = "changed in commit " + string(rune('0'+c))
			write(t, filepath.Join(dir, "big.txt"), strings.Join(lines, "\n"))
			write(t, filepath.Join(dir, "sub", "f.txt"), strings.Repeat("x", c*10))
			run(t, dir, nil, "git", "add", "-A")
			run(t, dir, nil, "git", "commit", "-q", "-m", "c")
		}
		hashLen := map[string]int{"sha1": 20, "sha256": 32}[format]
		for _, flags := range [][]string{{"--delta-base-offset"}, nil} {
			pack := run(t, dir, strings.NewReader("HEAD\n"), "git", append([]string{"pack-objects", "--revs", "--stdout", "-q"}, flags...)...)
			verify := run(t, dir, strings.NewReader(pack), "sh", "-c", "git index-pack --stdin >/dev/null && git verify-pack -v .git/objects/pack/*.idx")
			if !strings.Contains(verify, "chain length = 1") {
				t.Fatalf("%s %v: the test pack has no deltas:\n%s", format, flags, verify)
			}
			var out bytes.Buffer
			if err := checkPack(strings.NewReader(pack), &out, roomy(), hashLen); err != nil {
				t.Fatalf("%s %v: %v", format, flags, err)
			}
			if out.String() != pack {
				t.Fatalf("%s %v: %d bytes out of %d, or changed", format, flags, out.Len(), len(pack))
			}
		}
	}
}

// Through Import: a bomb is refused and nothing of it is stored, while
// the same pack within the caps is one git accepts (so it was refused for
// what it inflates to, not for being malformed).
func TestImportRefusesInflationBombs(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	dir := t.TempDir()
	run(t, dir, nil, "git", "init", "-q")
	g := Repo{Runner: execx.Local{}, Dir: dir}
	ctx := context.Background()
	objects := func() string {
		return run(t, dir, nil, "sh", "-c", "git count-objects -v; find .git/objects -mindepth 1 | sort")
	}
	empty := objects()

	blob := packOf(blobObj(t, 64<<20, zeros(64<<20)))
	if err := g.Import(ctx, bytes.NewReader(blob), PackLimits(1<<20)); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "raise it with --max-size") {
		t.Fatalf("a 64 MiB blob under a 1 MiB cap: %v", err)
	}
	base := blobObj(t, 64<<10, zeros(64<<10))
	bomb := packOf(base, ofsDelta(t, int64(len(base)), 64<<10, 4<<30, 65536))
	if len(bomb) > 16<<10 {
		t.Fatalf("bomb is %d bytes", len(bomb))
	}
	if err := g.Import(ctx, bytes.NewReader(bomb), PackLimits(2<<30)); !errors.Is(err, ErrInflate) || !strings.Contains(err.Error(), "delta's result") {
		t.Fatalf("a %d-byte pack resolving to 4 GiB: %v", len(bomb), err)
	}
	if got := objects(); got != empty {
		t.Fatalf("refused packs left objects:\n%s", got)
	}
	// Within the caps git takes both shapes.
	if err := g.Import(ctx, bytes.NewReader(blob), PackLimits(128<<20)); err != nil {
		t.Fatalf("the blob within the cap: %v", err)
	}
	small := packOf(base, ofsDelta(t, int64(len(base)), 64<<10, 256<<10, 4))
	if err := g.Import(ctx, bytes.NewReader(small), PackLimits(1<<20)); err != nil {
		t.Fatalf("a delta within the cap: %v", err)
	}
	if n := strings.TrimSpace(run(t, dir, nil, "sh", "-c", "git cat-file --batch-all-objects --batch-check | grep -c ' blob '")); n != "3" {
		t.Fatalf("%s blobs stored, want 3 (64 MiB of zeros, 64 KiB of zeros, 256 KiB of zeros)", n)
	}
	// index-pack's own refusals still read as one: a malformed object
	// that passes the size checks.
	tree := packOf(append(objHeader(objTree, 5), deflate(t, data([]byte("junk!")))...))
	if err := g.Import(ctx, bytes.NewReader(tree), PackLimits(1<<20)); err == nil || !strings.Contains(err.Error(), "check the VM's objects") {
		t.Fatalf("a malformed tree: %v", err)
	}
}

// A VM that sends a bad object and then stalls cannot hold collect:
// index-pack's refusal ends Import while the checker still waits.
func TestImportReturnsWhenIndexPackRefusesAndTheVMStalls(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	dir := t.TempDir()
	run(t, dir, nil, "git", "init", "-q")
	tree := append(objHeader(objTree, 5), deflate(t, data([]byte("junk!")))...)
	start := append([]byte("PACK\x00\x00\x00\x02\x00\x00\x00\x02"), tree...)
	pr, pw := io.Pipe()
	defer pw.Close()
	go pw.Write(start) // and nothing more, ever
	done := make(chan error, 1)
	go func() {
		done <- Repo{Runner: execx.Local{}, Dir: dir}.Import(context.Background(), pr, PackLimits(1<<20))
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "git index-pack") {
			t.Fatalf("got %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Import waited on a stalled VM after index-pack had refused the pack")
	}
}
