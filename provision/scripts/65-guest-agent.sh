#!/bin/sh
# The QEMU guest agent: the host-only channel (virtio-serial) through which
# a clone restored from a warm template gets its own identity (host key,
# machine-id, hostname, fresh randomness, the time) before it uses the
# network. It starts only where QEMU offers its port; Debian's unit binds
# to that device.
set -eu
export DEBIAN_FRONTEND=noninteractive
if ! command -v qemu-ga >/dev/null 2>&1; then
  [ -n "$(ls /var/lib/apt/lists/ 2>/dev/null | grep -v -e lock -e partial)" ] || apt-get update -qq
  apt-get install -y -qq --no-install-recommends qemu-guest-agent >/dev/null
fi
qemu-ga --version
# The agent logs every command it is sent at info level, and fleet polls a
# running script's status tens of times: journald storing those lines was
# a large part of a restored clone's first seconds under emulation.
# Warnings and errors are still kept.
mkdir -p /etc/systemd/system/qemu-guest-agent.service.d
cat > /etc/systemd/system/qemu-guest-agent.service.d/50-agentfleet.conf <<'UNIT'
[Service]
LogLevelMax=notice
UNIT
