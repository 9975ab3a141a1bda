package execx

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestRunErrorCarriesCommandAndOutputTail(t *testing.T) {
	_, err := Local{}.Run(context.Background(), Cmd{
		Name: "sh",
		Args: []string{"-c", "for i in $(seq 1 30); do echo line$i; done; echo boom >&2; exit 3"},
	})
	var re *RunError
	if !errors.As(err, &re) {
		t.Fatalf("want *RunError, got %v", err)
	}
	if re.ExitCode != 3 {
		t.Errorf("exit code = %d, want 3", re.ExitCode)
	}
	msg := err.Error()
	for _, want := range []string{"sh -c", "boom", "line30"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	if strings.Contains(msg, "line1\n") {
		t.Errorf("error should carry only the tail, got %q", msg)
	}
}

func TestMissingProgramIsNamed(t *testing.T) {
	_, err := Local{}.Run(context.Background(), Cmd{Name: "no-such-program-xyz"})
	if !IsNotFound(err) || !strings.Contains(err.Error(), "no-such-program-xyz is not installed") {
		t.Fatalf("got %v", err)
	}
}

func TestCancelStopsCommand(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Local{}.Run(ctx, Cmd{Name: "sleep", Args: []string{"10"}})
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want deadline error, got %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("command was not stopped on cancel")
	}
}

func TestShellJoinRoundTrips(t *testing.T) {
	args := []string{"printf", "%s|", "a b", "it's", "$(x)", "`y`", "", "ü\nz"}
	out, err := Local{}.Run(context.Background(), Cmd{Name: "sh", Args: []string{"-c", ShellJoin(args)}})
	if err != nil {
		t.Fatal(err)
	}
	want := "a b|it's|$(x)|`y`||ü\nz|"
	if string(out) != want {
		t.Fatalf("got %q want %q", out, want)
	}
}

// Unset keeps named variables of this process's environment from the
// command; Env still reaches it.
func TestUnsetFiltersTheInheritedEnvironment(t *testing.T) {
	t.Setenv("FLEET_TEST_DROP_ME", "1")
	t.Setenv("FLEET_TEST_KEEP_ME", "2")
	out, err := Local{}.Run(context.Background(), Cmd{Name: "env", Env: []string{"FLEET_TEST_ADDED=3"},
		Unset: func(name string) bool { return name == "FLEET_TEST_DROP_ME" }})
	if err != nil {
		t.Fatal(err)
	}
	env := string(out)
	if strings.Contains(env, "FLEET_TEST_DROP_ME") || !strings.Contains(env, "FLEET_TEST_KEEP_ME=2") || !strings.Contains(env, "FLEET_TEST_ADDED=3") {
		t.Fatalf("environment:\n%s", env)
	}
}
