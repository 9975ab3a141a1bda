#!/bin/sh
# Docker from the distribution's own package (docker.io): it comes from the
# same mirror as everything else, so the image builds with no third-party
# repository. The daemon starts at boot; in a chroot it is only enabled.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends docker.io containerd runc iptables >/dev/null
systemctl enable docker.service containerd.service >/dev/null 2>&1 || true
