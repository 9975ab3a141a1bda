package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/fleet"
	"github.com/agentfleet/agentfleet/internal/egress"
	"github.com/agentfleet/agentfleet/internal/layout"
)

// TestMain lets a test run this binary as the proxy, the way QEMU does.
func TestMain(m *testing.M) {
	// The shim starts the machine's proxy server as this binary.
	if len(os.Args) > 1 && os.Args[1] == fleet.ProxyServerCommand {
		os.Exit(fleet.ProxyServerMain(os.Args[2:]))
	}
	if args := os.Getenv("FLEET_TEST_PROXY_ARGS"); args != "" {
		os.Exit(fleet.ProxyShimMain(strings.Fields(args)))
	}
	os.Exit(m.Run())
}

// proxyConn starts the proxy as QEMU's guestfwd cmd: does, with one end of a
// socketpair as its stdin, stdout and stderr, and returns the other end.
func proxyConn(t *testing.T, kind, dir string, env ...string) net.Conn {
	t.Helper()
	fds, err := socketpair()
	if err != nil {
		t.Fatal(err)
	}
	child := os.NewFile(uintptr(fds[0]), "child")
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), append(env, "FLEET_TEST_PROXY_ARGS="+kind+" "+dir)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = child, child, child
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	child.Close()
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); egress.StopServer(dir) })
	f := os.NewFile(uintptr(fds[1]), "guest")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c
}

func TestEgressProxyProcessServesItsStdinAndPrintsNothingElse(t *testing.T) {
	dir := t.TempDir()
	pol, _ := egress.Build(egress.ModeAllowlist, []string{"claude"}, nil, nil)
	if err := egress.SavePolicy(dir, pol); err != nil {
		t.Fatal(err)
	}
	c := proxyConn(t, "egress", dir)
	fmt.Fprint(c, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
	all, _ := io.ReadAll(c) // the proxy must close the connection, not hang
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(string(all))), nil)
	if err != nil {
		t.Fatalf("%q: %v", all, err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 403 || string(body) != "fleet egress: not in the allowlist\n" {
		t.Errorf("%s %q", resp.Status, body)
	}
	log, _ := os.ReadFile(filepath.Join(dir, egress.AuditFile))
	if !strings.Contains(string(log), `"verdict":"deny"`) || !strings.Contains(string(log), `"host":"example.com"`) {
		t.Errorf("audit log: %s", log)
	}
}

func TestCredentialProxyProcessTakesTheKeyFromItsEnvironmentOnly(t *testing.T) {
	var got string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.Header.Get("X-Api-Key")
		io.WriteString(w, "ok")
	}))
	defer up.Close()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, layout.CredentialsFile), []byte(fmt.Sprintf(`{"token":"tok","upstream":%q}`, up.URL)), 0o600)
	c := proxyConn(t, "credentials", dir, fleet.CredentialEnv+"=ANTHROPIC_API_KEY:sk-real", "ANTHROPIC_API_KEY=")
	fmt.Fprint(c, "POST /v1/messages HTTP/1.1\r\nHost: 10.0.2.100\r\nAuthorization: Bearer tok\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "ok" || got != "sk-real" {
		t.Errorf("%s %q, upstream saw key %q", resp.Status, body, got)
	}
	b, _ := os.ReadFile(filepath.Join(dir, egress.AuditFile))
	if strings.Contains(string(b), "sk-real") {
		t.Error("the key reached the audit log")
	}
}

// The shim hands each connection to one server per machine and exits: many
// guest connections are one process, not one each.
func TestShimsHandConnectionsToOneServer(t *testing.T) {
	dir := t.TempDir()
	pol, _ := egress.Build(egress.ModeAllowlist, nil, nil, nil)
	if err := egress.SavePolicy(dir, pol); err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	for i := 0; i < 5; i++ {
		fds, err := socketpair()
		if err != nil {
			t.Fatal(err)
		}
		child := os.NewFile(uintptr(fds[0]), "child")
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), "FLEET_TEST_PROXY_ARGS=egress "+dir)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = child, child, child
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		child.Close()
		// The shim exits once the server has the connection, while the
		// guest's connection stays open.
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("shim %d: %v", i, err)
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			t.Fatalf("shim %d did not exit after the handoff", i)
		}
		f := os.NewFile(uintptr(fds[1]), "guest")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	t.Cleanup(func() { egress.StopServer(dir) })
	pid, ok := egress.ServerPID(dir)
	if !ok {
		t.Fatal("no proxy server runs")
	}
	for i, c := range conns {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprint(c, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != 403 {
			t.Fatalf("connection %d: %v %v", i, resp, err)
		}
		c.Close()
	}
	if again, _ := egress.ServerPID(dir); again != pid {
		t.Errorf("server pid changed from %d to %d", pid, again)
	}
	egress.StopServer(dir)
	if _, ok := egress.ServerPID(dir); ok {
		t.Error("StopServer left the server running")
	}
}

// socketpair is a close-on-exec unix stream pair (SOCK_CLOEXEC is Linux's;
// this builds for macOS too).
func socketpair() ([2]int, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err == nil {
		syscall.CloseOnExec(fds[0])
		syscall.CloseOnExec(fds[1])
	}
	return fds, err
}
