#!/usr/bin/env bash
# Installs what fleet needs on a Debian or Ubuntu host: QEMU, qemu-img, the
# image build tools (mmdebstrap, sfdisk), git, rsync and OpenSSH for workspaces,
# unshare (util-linux) for read-only shared folders, less for fleet top's pager,
# tmux, in which the e2e tests drive fleet top, and docker-registry, the OCI
# registry the image push and pull tests start on loopback.
set -euo pipefail
need=(qemu-system-x86 qemu-utils mmdebstrap fdisk e2fsprogs mount util-linux git rsync openssh-client procps iproute2 tmux less docker-registry)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v go >/dev/null || { echo "Go is required (https://go.dev/dl/); not found in PATH" >&2; exit 1; }
