#!/bin/sh
# Node.js and npm from the distribution (Debian 12: 18.x, Ubuntu 24.04:
# 18.x); Claude Code itself is a native binary, Node is for the agent's
# projects and for npm.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 18 ]; then
  echo "node $(node --version) is too old: need 18 or newer" >&2
  exit 1
fi
echo "node $(node --version), npm $(npm --version)"
