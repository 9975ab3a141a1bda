#!/bin/sh
# Makes a generic, fast-booting cloud guest: DHCP on any wired NIC through
# systemd-networkd, cloud-init reading only the NoCloud seed, serial
# console, no boot menu. Runs as root in a chroot (FLEET_SOURCE=rootfs) or
# over SSH in a booted cloud image (FLEET_SOURCE=ssh), like every script here.
set -eu

mkdir -p /etc/systemd/network /etc/cloud/cloud.cfg.d
cat > /etc/systemd/network/20-wired.network <<'NET'
[Match]
Name=en* eth*

[Network]
DHCP=yes
# A fork's child is restored with its link down until it has its own
# identity: keeping the lease across that saves a new DHCP round (seconds
# under emulation) before its SSH answers.
IgnoreCarrierLoss=yes
NET
systemctl enable systemd-networkd
# An image whose boot was trimmed (85-fast-boot.sh) has resolved masked.
[ "$(systemctl is-enabled systemd-resolved 2>/dev/null)" = masked ] || systemctl enable systemd-resolved

# cloud-init: only the local seed (no network probing of metadata
# services, which costs minutes under emulation), and it leaves the network
# to systemd-networkd.
cat > /etc/cloud/cloud.cfg.d/90-agentfleet.cfg <<'CFG'
datasource_list: [NoCloud, None]
network: {config: disabled}
CFG

# Keys only. Set here rather than by cloud-init's ssh_pwauth, which
# restarts sshd after boot and resets the first connections.
mkdir -p /etc/ssh/sshd_config.d
cat > /etc/ssh/sshd_config.d/50-agentfleet.conf <<'SSHD'
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
SSHD

# Units that only slow a throwaway VM's boot or wake it up later.
systemctl mask apt-daily.timer apt-daily-upgrade.timer man-db.timer \
  e2scrub_all.timer e2scrub_reap.service fstrim.timer \
  systemd-networkd-wait-online.service

# The GRUB defaults only apply to disks this builder assembles; a cloud
# image keeps its own boot setup.
[ "${FLEET_SOURCE:-rootfs}" = rootfs ] || exit 0
. /etc/os-release
# The serial console: an arm64 virt board's is its PL011 (ttyAMA0), which
# GRUB reaches through the UEFI console; a PC's is the 8250 (ttyS0).
case "$(dpkg --print-architecture)" in
arm64) console=ttyAMA0 terminal=console ;;
*) console=ttyS0 terminal=serial ;;
esac
cat > /etc/default/grub <<GRUB
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_TIMEOUT_STYLE=hidden
GRUB_DISTRIBUTOR="$NAME"
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=$console,115200"
GRUB_TERMINAL="$terminal"
GRUB_SERIAL_COMMAND="serial --speed=115200"
GRUB_DISABLE_OS_PROBER=true
GRUB
