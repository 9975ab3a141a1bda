package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/kdomanski/iso9660"
	"golang.org/x/crypto/ssh"
)

// runGuest stands in for a booted VM: after $FAKE_VBOX_BOOT_MS it serves
// SSH on the forwarded port with the host key from the seed ISO, accepts
// only the seed's authorized key for its user, and answers every command
// with one line naming the machine. It runs nothing.
func runGuest(args []string) {
	if len(args) != 3 {
		fmt.Println("usage: vboxfake __guest PORT SEED_ISO NAME")
		os.Exit(2)
	}
	port, iso, name := args[0], args[1], args[2]
	hostKey, user, authorized, err := readSeed(iso)
	if err != nil {
		fmt.Println("fake guest:", err)
		os.Exit(1)
	}
	if ms, _ := strconv.Atoi(os.Getenv("FAKE_VBOX_BOOT_MS")); ms > 0 {
		time.Sleep(time.Duration(ms) * time.Millisecond)
	}
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(c ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
			if c.User() == user && bytes.Equal(k.Marshal(), authorized.Marshal()) {
				return nil, nil
			}
			return nil, fmt.Errorf("unknown key")
		},
	}
	cfg.AddHostKey(hostKey)
	ln, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		fmt.Println("fake guest:", err)
		os.Exit(1)
	}
	fmt.Printf("fake guest %s: ssh on %s\n", name, ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go serve(c, cfg, name)
	}
}

func serve(c net.Conn, cfg *ssh.ServerConfig, name string) {
	_, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		return
	}
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		if nc.ChannelType() != "session" {
			nc.Reject(ssh.UnknownChannelType, "only sessions")
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			continue
		}
		go func() {
			defer ch.Close()
			for r := range creqs {
				if r.Type != "exec" {
					r.Reply(false, nil)
					continue
				}
				var p struct{ Command string }
				ssh.Unmarshal(r.Payload, &p)
				r.Reply(true, nil)
				fmt.Fprintf(ch, "fake guest %s: %s\n", name, p.Command)
				status := make([]byte, 4)
				binary.BigEndian.PutUint32(status, 0)
				ch.SendRequest("exit-status", false, status)
				return
			}
		}()
	}
}

// readSeed pulls the host key, user and authorized key out of the NoCloud
// seed the driver attached, as cloud-init would.
func readSeed(path string) (ssh.Signer, string, ssh.PublicKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, "", nil, err
	}
	defer f.Close()
	img, err := iso9660.OpenImage(f)
	if err != nil {
		return nil, "", nil, err
	}
	root, err := img.RootDir()
	if err != nil {
		return nil, "", nil, err
	}
	kids, err := root.GetChildren()
	if err != nil {
		return nil, "", nil, err
	}
	var ud string
	for _, k := range kids {
		if strings.EqualFold(k.Name(), "user-data") {
			b, _ := io.ReadAll(k.Reader())
			ud = string(b)
		}
	}
	if ud == "" {
		return nil, "", nil, fmt.Errorf("no user-data in %s", path)
	}
	var pem, user, authorized strings.Builder
	inKey := false
	for _, l := range strings.Split(ud, "\n") {
		switch {
		case strings.HasPrefix(l, "  - name: "):
			user.WriteString(unquote(strings.TrimPrefix(l, "  - name: ")))
		case strings.HasPrefix(l, "      - ") && authorized.Len() == 0:
			authorized.WriteString(unquote(strings.TrimPrefix(l, "      - ")))
		case strings.HasPrefix(l, "  ed25519_private: |"):
			inKey = true
		case inKey && strings.HasPrefix(l, "    "):
			pem.WriteString(strings.TrimPrefix(l, "    ") + "\n")
		default:
			inKey = false
		}
	}
	signer, err := ssh.ParsePrivateKey([]byte(pem.String()))
	if err != nil {
		return nil, "", nil, fmt.Errorf("seed host key: %w", err)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(authorized.String()))
	if err != nil {
		return nil, "", nil, fmt.Errorf("seed authorized key: %w", err)
	}
	return signer, user.String(), pub, nil
}

func unquote(s string) string {
	if u, err := strconv.Unquote(s); err == nil {
		return u
	}
	return strings.Trim(s, `"`)
}
