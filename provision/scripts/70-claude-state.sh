#!/bin/sh
# Claude Code's first-run state for the agent user, so an unattended
# session never stops at a prompt: onboarding done, /workspace trusted,
# bypass-permissions mode accepted.
set -eu
command -v claude >/dev/null || { echo "claude not installed: no state to seed"; exit 0; }
user=${FLEET_AGENT_USER:-agent}
home=$(getent passwd "$user" | cut -d: -f6)
version=$(claude --version | awk '{print $1}')
mkdir -p "$home/.claude"
cat > "$home/.claude.json" <<JSON
{
  "hasCompletedOnboarding": true,
  "lastOnboardingVersion": "$version",
  "bypassPermissionsModeAccepted": true,
  "autoUpdates": false,
  "projects": {
    "/workspace": {
      "hasTrustDialogAccepted": true,
      "hasCompletedProjectOnboarding": true,
      "allowedTools": []
    }
  }
}
JSON
# The hooks report the agent's state to fleet top and fleet ls: each runs
# ~/.fleet/hook (installed with every session) with the event's name.
hook() { printf '[{%s"hooks": [{"type": "command", "command": "test -x \\"$HOME/.fleet/hook\\" && \\"$HOME/.fleet/hook\\" %s || true"}]}]' "$2" "$1"; }
cat > "$home/.claude/settings.json" <<JSON
{
  "permissions": {"defaultMode": "bypassPermissions"},
  "skipDangerousModePermissionPrompt": true,
  "env": {"DISABLE_AUTOUPDATER": "1"},
  "hooks": {
    "Notification": $(hook notification ''),
    "Stop": $(hook stop ''),
    "PostToolUse": $(hook tool '"matcher": "*", '),
    "UserPromptSubmit": $(hook prompt '')
  }
}
JSON
jq -e '.hooks.PostToolUse[0].hooks[0].command' "$home/.claude/settings.json" >/dev/null
chown -R "$user:$user" "$home/.claude" "$home/.claude.json"
