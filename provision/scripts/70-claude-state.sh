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
cat > "$home/.claude/settings.json" <<'JSON'
{
  "permissions": {"defaultMode": "bypassPermissions"},
  "skipDangerousModePermissionPrompt": true,
  "env": {"DISABLE_AUTOUPDATER": "1"}
}
JSON
chown -R "$user:$user" "$home/.claude" "$home/.claude.json"
