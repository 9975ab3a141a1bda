#!/bin/sh
# A shorter boot, for images whose every boot is a fleet clone's. Measured
# under emulation, the slow parts were cloud-init's stages (python starting
# again and again: 21 s local, 30 s config, ...), Docker (23 s) with
# containerd (9 s), all before or beside sshd, and GRUB reading a 15 MB
# initrd with every module in it. So:
# - The seed's identity (hostname, the pinned host key, the agent's key,
#   the seed's files) is applied by a small unit, fleet-seed, from the
#   program the host puts on the seed disk (fleet-identity), as soon as the
#   root file system is writable and before sshd starts; cloud-init is off.
#   The image already has the agent user.
# - Docker starts on first use of its socket, not at boot.
# - The initrd holds only the drivers a fleet machine's disk needs.
# - No fsck at boot (a clone's disk is minutes old; ext4's journal replays
#   at mount), and neither speculative-execution mitigations nor zeroing of
#   freed pages in the guest: they guard the guest's processes from each
#   other, and they all belong to one agent with sudo. The host's
#   protection from the guest does not depend on them.
# - The builder copies the kernel and initrd out, and fleet starts them
#   directly: no firmware boot menu, no GRUB reading 20 MB through the
#   BIOS (ten seconds under emulation).
# The untrimmed recipe leaves this script out, to measure against.
set -eu

mkdir -p /usr/local/lib/agentfleet /var/lib/agentfleet
cat > /usr/local/lib/agentfleet/apply-seed <<'SH'
#!/bin/sh
# Applies this clone's seed once per instance: a reboot of the same clone
# keeps what it has (the seed appends to files). The seed disk is found by
# its label straight from the block devices, without waiting for udev.
set -eu
dev=
for i in $(seq 1 100); do
  dev=$(blkid -L cidata 2>/dev/null) && break
  sleep 0.1
done
[ -n "$dev" ] || { echo "fleet-seed: no seed disk (label cidata)" >&2; exit 1; }
mnt=$(mktemp -d /run/fleet-seed.XXXXXX)
mount -o ro -t iso9660 "$dev" "$mnt"
trap 'umount "$mnt"; rmdir "$mnt"' EXIT
id=$(sed -n 's/^instance-id: *//p' "$mnt/meta-data")
[ -n "$id" ] || { echo "fleet-seed: the seed has no instance-id" >&2; exit 1; }
if [ "$(cat /var/lib/agentfleet/seeded-instance 2>/dev/null)" = "$id" ]; then
  echo "fleet-seed: instance $id already has its identity"
  exit 0
fi
# The identity program records the instance once it is applied.
perl "$mnt/fleet-identity"
echo "fleet-seed: identity of instance $id applied"
SH
chmod 755 /usr/local/lib/agentfleet/apply-seed

cat > /etc/systemd/system/fleet-seed.service <<'UNIT'
[Unit]
Description=fleet: this clone's identity from its seed disk
DefaultDependencies=no
After=systemd-remount-fs.service
Before=ssh.service sysinit.target
Wants=systemd-remount-fs.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/lib/agentfleet/apply-seed

[Install]
WantedBy=sysinit.target
UNIT
systemctl enable fleet-seed.service
# cloud-init's own switch: none of its units start.
touch /etc/cloud/cloud-init.disabled

# Docker on socket activation: dockerd (and containerd with it) starts when
# something first talks to /run/docker.sock.
if [ -e /lib/systemd/system/docker.socket ] || [ -e /usr/lib/systemd/system/docker.socket ]; then
  systemctl disable docker.service containerd.service >/dev/null 2>&1
  systemctl enable docker.socket
fi

# sshd without its config test before each start (a broken config fails the
# start all the same), a journal in memory (no flush to disk on the way to
# sshd; a clone's logs die with it anyway), and no modules loaded for
# hardware a fleet machine has not (graphics, EFI pstore).
mkdir -p /etc/systemd/system/ssh.service.d /etc/systemd/journald.conf.d
printf '[Service]\nExecStartPre=\n' > /etc/systemd/system/ssh.service.d/90-agentfleet-fast-boot.conf
# sshd listens on the wildcard address, so it need not wait for the network
# (an ordering a drop-in cannot remove: the unit is copied without it).
for u in /lib/systemd/system/ssh.service /usr/lib/systemd/system/ssh.service; do
  if [ -e "$u" ]; then
    sed '/^After=/s/network\.target//' "$u" > /etc/systemd/system/ssh.service
    break
  fi
done
# System users were made when their packages installed.
systemctl mask systemd-sysusers.service >/dev/null 2>&1
# Modules udev would load at every boot for what an emulated CPU claims to
# have: accelerated hash and cipher code (the generic code is the same speed
# in a guest under emulation), nested KVM (modprobe kvm_intel by hand to
# run VMs inside), a raw PS/2 port and the PC speaker. Each load costs a
# process and a relocation while sshd waits.
mkdir -p /etc/modprobe.d
for m in kvm kvm_amd kvm_intel irqbypass crct10dif_pclmul crc32_pclmul ghash_clmulni_intel \
  sha512_ssse3 sha256_ssse3 sha1_ssse3 aesni_intel serio_raw pcspkr; do
  echo "blacklist $m"
done > /etc/modprobe.d/agentfleet-fast-boot.conf
printf '[Journal]\nStorage=volatile\n' > /etc/systemd/journald.conf.d/90-agentfleet-fast-boot.conf
systemctl mask modprobe@drm.service modprobe@efi_pstore.service >/dev/null 2>&1

# DNS straight from the hypervisor's resolver, which QEMU's user network and
# VirtualBox's NAT both serve at 10.0.2.3 (what DHCP hands out there too):
# systemd-resolved took 3 s on the way to sshd. Egress-restricted machines
# resolve through the proxy either way.
# The builder puts its own resolv.conf back after provisioning, so the
# guest's comes from a tmpfiles rule at boot.
systemctl disable systemd-resolved.service >/dev/null 2>&1 || true
systemctl mask systemd-resolved.service >/dev/null 2>&1
mkdir -p /etc/agentfleet /etc/tmpfiles.d
printf 'nameserver 10.0.2.3\n' > /etc/agentfleet/resolv.conf
printf 'L+ /etc/resolv.conf - - - - /etc/agentfleet/resolv.conf\n' > /etc/tmpfiles.d/agentfleet-resolv.conf

# Under emulation (TCG; systemd calls it "qemu", hardware virtualization
# "kvm"), no address-space randomization for the guest's processes. QEMU
# keys the code it translates by virtual address, so each new process
# (every SSH session's sshd, shell and sudo) placed at new addresses had
# its libraries translated again: about 40 MiB of the host's translation
# cache per `fleet exec true`, kept until QEMU ends; at fixed addresses the
# second one costs about 1 MiB. Like the mitigations above it guards the
# guest's processes from each other, and they all belong to the agent.
cat > /etc/systemd/system/fleet-emulated-aslr.service <<'UNIT'
[Unit]
Description=fleet: fixed process addresses under emulation (translated code is reused)
ConditionVirtualization=qemu
DefaultDependencies=no
Before=sysinit.target ssh.service

[Service]
Type=oneshot
ExecStart=/sbin/sysctl -qw kernel.randomize_va_space=0

[Install]
WantedBy=sysinit.target
UNIT
systemctl enable fleet-emulated-aslr.service >/dev/null 2>&1

# The kernel command line, for disks this builder assembles (update-grub
# runs then) and for booted cloud images (it runs here).
mkdir -p /etc/default/grub.d
cat > /etc/default/grub.d/90-agentfleet-fast-boot.cfg <<'GRUB'
GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT fsck.mode=skip mitigations=off init_on_alloc=0 audit=0 8250.nr_uarts=1 i8042.noaux i8042.nokbd i8042.nopnp"
GRUB
if [ "${FLEET_SOURCE:-rootfs}" = ssh ] && command -v update-grub >/dev/null; then
  update-grub >/dev/null 2>&1
fi

# The initrd: the disk drivers of QEMU (virtio), VirtualBox (AHCI, PIIX)
# and NVMe, and ext4; nothing else.
if [ -d /etc/initramfs-tools ]; then
  mkdir -p /etc/initramfs-tools/conf.d
  # Written only when it differs: its time is one of the initrd's inputs.
  conf=/etc/initramfs-tools/conf.d/90-agentfleet.conf
  [ "$(cat "$conf" 2>/dev/null)" = MODULES=list ] || echo MODULES=list > "$conf"
  for m in virtio_pci virtio_blk virtio_scsi ahci ata_piix sd_mod nvme ext4 crc32c_generic; do
    grep -qx "$m" /etc/initramfs-tools/modules 2>/dev/null || echo "$m" >> /etc/initramfs-tools/modules
  done
  # What the initrd is made from: its configuration, its hooks, the
  # kernels and their modules. A source that is itself a fleet image has
  # the same inputs as when its initrd was made, and rebuilding it costs a
  # minute under emulation; the stamp also names each initrd, so one
  # replaced or removed since is made again.
  inputs() {
    find /etc/initramfs-tools /usr/share/initramfs-tools \( -type f -o -type l \) -printf '%p %s %T@ %l\n' 2>/dev/null
    find /boot -maxdepth 1 \( -type f -o -type l \) -printf '%p %s %T@ %l\n'
    for k in /lib/modules/*; do [ -f "$k/modules.dep" ] && sha256sum "$k/modules.dep"; done
  }
  stamp=/var/lib/agentfleet/fast-boot-initrd.sha256
  if [ -f "$stamp" ] && [ "$(inputs | LC_ALL=C sort | sha256sum)" = "$(cat "$stamp")" ]; then
    echo "initrd: unchanged since it was made (same configuration, hooks, kernels and modules)"
  else
    update-initramfs -u -k all >/dev/null 2>&1
    inputs | LC_ALL=C sort | sha256sum > "$stamp"
  fi
  ls -l /boot/initrd.img-* | awk '{print "initrd:", $5, $NF}'
fi
