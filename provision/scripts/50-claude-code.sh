#!/bin/sh
# Claude Code from npm, at FLEET_CLAUDE_VERSION (a version, or a dist-tag
# such as "latest"). Its postinstall puts the native binary in place, so
# `claude` runs without a resident Node process.
set -eu
version=${FLEET_CLAUDE_VERSION:-latest}
registry=${FLEET_NPM_REGISTRY:-https://registry.npmjs.org/}
# Extra CAs from 15-ca-certs.sh are in the system store; npm's Node
# only trusts its own bundle unless told.
export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
npm install --global --no-fund --no-audit --loglevel=error \
  --registry "$registry" "@anthropic-ai/claude-code@$version"
# npm 12 no longer runs a package's install scripts by default: run the
# one that links the native binary, as its own message says to.
if ! claude --version >/dev/null 2>&1; then
  (cd "$(npm root --global)/@anthropic-ai/claude-code" && node install.cjs)
fi
claude --version
