package sshx

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"os"
	"strings"

	"golang.org/x/crypto/ssh"
)

// KeyPair is an ed25519 key in the two encodings OpenSSH and cloud-init use.
type KeyPair struct {
	PrivatePEM    []byte // OpenSSH private key format
	AuthorizedKey string // "ssh-ed25519 AAAA... comment", no newline
}

// NewKeyPair generates a fresh ed25519 key.
func NewKeyPair(comment string) (KeyPair, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return KeyPair{}, err
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return KeyPair{}, err
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		return KeyPair{}, err
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp)))
	if comment != "" {
		line += " " + comment
	}
	return KeyPair{PrivatePEM: pem.EncodeToMemory(block), AuthorizedKey: line}, nil
}

// LoadSigner reads an OpenSSH private key file.
func LoadSigner(path string) (ssh.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("parse private key %s: %w", path, err)
	}
	return s, nil
}

// ParseAuthorizedKey parses one "type base64 [comment]" line.
func ParseAuthorizedKey(line string) (ssh.PublicKey, error) {
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		return nil, fmt.Errorf("parse public key: %w", err)
	}
	return k, nil
}
