#!/bin/sh
# Runs last in the chroot: remove everything that must differ per clone or
# must not ship. cloud-init makes the host key and user on first boot; an
# empty machine-id makes systemd generate a fresh one per clone.
set -eu
rm -f /etc/ssh/ssh_host_*
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
passwd -l root >/dev/null
echo localhost > /etc/hostname
cloud-init clean --logs >/dev/null 2>&1 || true
apt-get clean
rm -rf /var/lib/apt/lists/* /tmp/* /var/tmp/*
