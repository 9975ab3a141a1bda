#!/bin/sh
# Docker from the distribution's own package (docker.io): it comes from the
# same mirror as everything else, so the image builds with no third-party
# repository. The daemon starts at boot; in a chroot it is only enabled.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends docker.io containerd runc iptables >/dev/null
systemctl enable docker.service containerd.service >/dev/null 2>&1 || true
# Egress: a fleet VM without open networking reaches out only through the
# host proxy. The seed writes its address into /etc/fleet/proxy.env at first
# boot, before Docker starts; EnvironmentFile is read at each start, so no
# daemon-reload is needed. Without the file (open egress) nothing changes.
mkdir -p /etc/systemd/system/docker.service.d
cat > /etc/systemd/system/docker.service.d/fleet-proxy.conf <<'UNIT'
[Service]
EnvironmentFile=-/etc/fleet/proxy.env
UNIT
