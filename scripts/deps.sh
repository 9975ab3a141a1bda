#!/usr/bin/env bash
# Installs what fleet needs on a Debian or Ubuntu host: QEMU, qemu-img, the
# image build tools (mmdebstrap, sfdisk), git, rsync and OpenSSH for workspaces,
# unshare (util-linux) for read-only shared folders, less for fleet top's pager,
# tmux, in which the e2e tests drive fleet top, docker-registry, the OCI
# registry the image push and pull tests start on loopback, and for arm64
# images: qemu-system-arm with its UEFI firmware (qemu-efi-aarch64) to boot
# them, qemu-user-static with binfmt-support and arch-test to bake them in a
# chroot on an amd64 host, dosfstools and mtools for their EFI system partition;
# and Slurm (slurmctld, slurmd, its clients) with munge, for the e2e cluster
# the slurm provider's tests start on this host.
set -euo pipefail
need=(qemu-system-x86 qemu-utils mmdebstrap fdisk e2fsprogs mount util-linux git rsync openssh-client procps iproute2 tmux less docker-registry
  qemu-system-arm qemu-efi-aarch64 qemu-user-static binfmt-support arch-test dosfstools mtools
  slurmctld slurmd slurm-client munge)
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
# A foreign architecture's binaries run in a chroot through binfmt_misc:
# systemd mounts it on first use, a container may not.
if [ "$(uname -m)" != aarch64 ]; then
  [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 || true
fi
command -v go >/dev/null || { echo "Go is required (https://go.dev/dl/); not found in PATH" >&2; exit 1; }
