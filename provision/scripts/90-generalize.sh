#!/bin/sh
# Runs last: remove everything that must differ per clone or must not ship.
# cloud-init makes the host key and the user's key on each clone's first
# boot; an empty machine-id makes systemd generate a fresh one per clone.
set -eu
rm -f /etc/ssh/ssh_host_*
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
passwd -l root >/dev/null
echo localhost > /etc/hostname
# The build key (SSH sources) and any other key must not ship.
rm -f /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys
cloud-init clean --logs >/dev/null 2>&1 || true
apt-get clean
rm -rf /var/lib/apt/lists/* /root/.npm /home/*/.npm /var/tmp/*
find /tmp -mindepth 1 -delete 2>/dev/null || true
find /var/log -type f -name '*.log' -exec truncate -s 0 {} + 2>/dev/null || true
# A booted guest hands its free blocks back so the exported disk is small;
# a disk assembled from a root file system has none to give back.
if [ "${FLEET_SOURCE:-rootfs}" = ssh ]; then
  fstrim -av || true
fi
