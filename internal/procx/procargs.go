package procx

import (
	"bytes"
	"encoding/binary"
)

// parseProcargs reads macOS's kern.procargs2 layout; it lives outside the
// darwin file so the tests here exercise it.
func parseProcargs(b []byte) string {
	if len(b) < 4 {
		return ""
	}
	argc := int(binary.LittleEndian.Uint32(b))
	rest := b[4:]
	i := bytes.IndexByte(rest, 0) // end of the executable's path
	if i < 0 {
		return ""
	}
	rest = bytes.TrimLeft(rest[i:], "\x00")
	var args [][]byte
	for len(args) < argc && len(rest) > 0 {
		j := bytes.IndexByte(rest, 0)
		if j < 0 {
			j = len(rest)
		}
		args = append(args, rest[:j])
		rest = rest[min(j+1, len(rest)):]
	}
	return string(bytes.Join(args, []byte{0}))
}
