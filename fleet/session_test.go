package fleet

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestReadTasks(t *testing.T) {
	tasks, err := ReadTasks(strings.NewReader("Fix the parser.\n\nKeep tests green: `go test`.\n---\n\nAdd $(docs) for \"x\"\n---  \nthird\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"Fix the parser.\n\nKeep tests green: `go test`.", "Add $(docs) for \"x\"", "third"}
	if len(tasks) != len(want) {
		t.Fatalf("got %d tasks: %q", len(tasks), tasks)
	}
	for i := range want {
		if string(tasks[i]) != want[i] {
			t.Errorf("task %d = %q, want %q", i+1, tasks[i], want[i])
		}
	}
	for in, msg := range map[string]string{"": "tasks file is empty", "a\n---\n\n---\nb\n": "task 2 is empty", "---\n": "task 1 is empty"} {
		if _, err := ReadTasks(strings.NewReader(in)); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%q: got %v, want %q", in, err, msg)
		}
	}
}

func TestProjectProfiles(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ProjectFile), []byte(`setup = "npm ci"
agent = "aider"
profile "aider" {
  command = ["aider", "--yes", "--message-file", "{task_file}"]
  task    = "file"
}
profile "script" {
  command = ["./agent.sh"]
}
`), 0o644)
	p, err := LoadProject(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.SetupCommands(); !slices.Equal(got, []string{"npm ci"}) {
		t.Errorf("setup %q", got)
	}
	if prof, err := p.Profile(""); err != nil || prof.Name != "aider" || prof.Task != "file" {
		t.Errorf("default profile: %+v %v", prof, err)
	}
	if prof, err := p.Profile("script"); err != nil || prof.Task != "stdin" {
		t.Errorf("script profile: %+v %v", prof, err)
	}
	if prof, err := p.Profile("claude"); err != nil || !prof.ClaudeStream {
		t.Errorf("claude: %+v %v", prof, err)
	}
	if _, err := p.Profile("codex"); err == nil || !strings.Contains(err.Error(), "claude, claude-interactive, aider, script") {
		t.Errorf("unknown profile: %v", err)
	}
	os.WriteFile(filepath.Join(dir, ProjectFile), []byte("profile \"x\" {\n  command = [\"x\"]\n  task = \"file\"\n}\n"), 0o644)
	if _, err := LoadProject(dir); err == nil || !strings.Contains(err.Error(), "{task_file}") {
		t.Errorf("file task without {task_file}: %v", err)
	}
}
