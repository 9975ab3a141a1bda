package vm

import (
	"encoding/hex"
	"fmt"
	"strings"
	"time"
)

// IdentityFile is the seed's copy of the boot identity program, which
// images baked with the fast-boot script run at boot in place of
// cloud-init (perl IdentityFile).
const IdentityFile = "fleet-identity"

// SeededInstanceFile is where the guest records the instance whose seed
// it has applied (the fast-boot unit applies a seed once per instance).
const SeededInstanceFile = "/var/lib/agentfleet/seeded-instance"

// Restored is what a clone restored from a warm template needs on top of
// its seed: the template's machine-id, randomness and clock are its
// siblings' too, and its services already run.
type Restored struct {
	MachineID string
	Entropy   []byte    // host randomness mixed into the guest's
	Now       time.Time // the host's time, set first (zero: left alone)
	// Fork: a running machine's copy, not a fresh template's. Its
	// /etc/environment loses the lines of ForgetEnv (its source's network
	// settings) before the seed's files are appended, and Docker is not
	// restarted (its containers run on; the proxies are at the same
	// addresses).
	Fork      bool
	ForgetEnv []string
	// Arch is the guest's: with its system call numbers the program
	// syncs and sets the clock itself, where each exec of sync or date
	// costs a clone a fraction of a second under emulation.
	Arch Arch
}

// HostTimeEnv, in a guest runner's environment, is the host's time as it
// started the script ("SECONDS.NANOSECONDS"): a restored clone's identity
// program sets the clock from it rather than from the older time the
// program was made with.
const HostTimeEnv = "FLEET_HOST_TIME"

// guestSyscalls are sync(2) and clock_settime(2) on each architecture.
var guestSyscalls = map[Arch][2]int{AMD64: {162, 227}, ARM64: {81, 112}}

// IdentityProgram is the perl program, run as root in the guest, that gives
// it the seed's identity: hostname, host key, the user's key and the seed's
// files. With r it is a restored clone: it also sets the clock, reseeds the
// kernel's CRNG, sets a new machine-id and makes sshd (from OpenSSH 9.8)
// and Docker, if it runs, reread what changed. Without r it runs at boot,
// before sshd starts and where systemd makes the machine-id.
//
// Perl, because perl-base is essential on Debian and Ubuntu and one process
// does what took the shell twenty (each exec costs a fraction of a second
// in a guest under emulation). The program text is fixed; every value
// comes after __DATA__ hex-encoded, so none is ever read as code.
func (s Seed) IdentityProgram(r *Restored) string { return s.identityProgram(r, "") }

// IdentityScript is IdentityProgram as a shell script (what GuestRun runs).
func (s Seed) IdentityScript(r *Restored) string {
	return "exec perl - <<'FLEET_IDENTITY_END'\n" + s.IdentityProgram(r) + "FLEET_IDENTITY_END\n"
}

// identityProgram puts every path the program touches under root (tests).
func (s Seed) identityProgram(r *Restored, root string) string {
	var d strings.Builder
	field := func(k string, vals ...string) {
		d.WriteString(k)
		for _, v := range vals {
			d.WriteString(" " + hex.EncodeToString([]byte(v)))
		}
		d.WriteByte('\n')
	}
	field("root", root)
	field("hostname", s.Hostname)
	field("user", s.User)
	field("home", "/home/"+s.User)
	field("host_key", strings.TrimSpace(s.HostKeyPrivate)+"\n")
	field("host_key_pub", s.HostKeyPublic+"\n")
	field("user_key", s.AuthorizedKey+"\n")
	field("instance", s.InstanceID)
	for _, f := range s.Files {
		appendFlag := ""
		if f.Append {
			appendFlag = "1"
		}
		field("file", f.Path, f.Content, f.Mode, appendFlag)
	}
	if r != nil {
		field("restored", "1")
		field("machine_id", r.MachineID+"\n")
		field("entropy", string(r.Entropy))
		if !r.Now.IsZero() {
			field("time", fmt.Sprintf("%d.%09d", r.Now.Unix(), r.Now.Nanosecond()))
		}
		if n, ok := guestSyscalls[r.Arch.Or()]; ok {
			field("sys_sync", fmt.Sprint(n[0]))
			field("sys_clock_settime", fmt.Sprint(n[1]))
		}
		if r.Fork {
			field("fork", "1")
			field("forget_env", strings.Join(r.ForgetEnv, " "))
		}
	}
	return identityPerl + "__DATA__\n" + d.String()
}

// identityPerl reads its values from DATA. Errors die, so the guest agent
// (or fleet-seed) reports the step that failed.
const identityPerl = `use strict;
use warnings;
my (%v, @files);
while (my $l = <DATA>) {
    chomp $l;
    my ($k, @vals) = split / /, $l, -1;
    my @d = map { pack("H*", $_) } @vals;
    if ($k eq 'file') { push @files, [@d] } else { $v{$k} = $d[0] }
}
my $R = $v{root};
sub mkdirs { my $p = ''; for my $part (grep { length } split m{/}, $_[0]) { $p .= "/$part"; mkdir $p } }
# A file is replaced whole (written beside it, then renamed over it), so
# a crash at any moment leaves the old file or the new one, never an empty
# one: an empty host key is an sshd that never starts again.
sub put {
    my ($path, $data, $mode, $append) = @_;
    if ($append) {
        open(my $f, '>>', $path) or die "write $path: $!\n";
        print $f $data;
        close $f or die "write $path: $!\n";
    } else {
        my $tmp = "$path.fleet-new";
        open(my $f, '>', $tmp) or die "write $tmp: $!\n";
        print $f $data;
        close $f or die "write $tmp: $!\n";
        if (defined $mode && length $mode) { chmod(oct($mode), $tmp) or die "chmod $tmp: $!\n" }
        rename($tmp, $path) or die "rename $tmp: $!\n";
        return;
    }
    if (defined $mode && length $mode) { chmod(oct($mode), $path) or die "chmod $path: $!\n" }
}
# sync(2) writes every file system out and flushes the disk (QEMU then
# writes its qcow2 metadata), so what came before it survives a killed
# hypervisor.
# With the guest's system call numbers, sync(2) and clock_settime(2) are
# called without an exec.
sub flush_disks {
    if ($v{sys_sync}) { syscall(int($v{sys_sync})) == 0 or die "sync: $!\n"; return }
    system('sync') == 0 or die "sync: $?\n";
}
# How long ago this process started (its age by the guest's own clock
# since boot, from /proc), 0 if unreadable.
sub process_age {
    open(my $s, '<', '/proc/self/stat') or return 0;
    my $st = <$s>;
    close $s;
    $st =~ s/^.*\) //s or return 0;
    my @f = split / /, $st;
    open(my $u, '<', '/proc/uptime') or return 0;
    my ($up) = split / /, scalar(<$u>);
    close $u;
    my $age = $up - $f[19] / 100;
    return ($age > 0 && $age < 600) ? $age : 0;
}
sub set_clock {
    my ($sec, $nsec) = split /\./, $_[0];
    # The host's time as the guest agent started this program, where its
    # runner gives it (HostTimeEnv); the time in DATA was read before the
    # agent connected, seconds earlier on a busy host. This program's own
    # start-up is added either way.
    my $fresh = 0;
    if (($ENV{FLEET_HOST_TIME} // '') =~ /^([0-9]{1,12})\.([0-9]{9})$/) { ($sec, $nsec, $fresh) = ($1, $2, 1) }
    my $ns = $nsec + int(process_age() * 1_000_000_000);
    $sec += int($ns / 1_000_000_000);
    $nsec = $ns - int($ns / 1_000_000_000) * 1_000_000_000;
    # A clock at that time or just past it (a fork's child, whose clock
    # ran on from its source's) is left: stepping it back makes journald
    # rotate its files (a second of a fork child's start under emulation)
    # and file times go backwards. With only DATA's older time, "just
    # past" is up to a minute.
    my $ahead = time() - $sec;
    return if $ahead >= 0 && $ahead < ($fresh ? 2 : 60);
    if ($v{sys_clock_settime}) {
        # CLOCK_REALTIME (0), a struct timespec of two 64-bit fields.
        syscall(int($v{sys_clock_settime}), 0, pack('q q', $sec, $nsec)) == 0 or die "set the clock: $!\n";
        return;
    }
    system('date', '-s', sprintf('@%d.%09d', $sec, $nsec)) == 0 or die "set the clock: date exited $?\n";
}
if ($v{restored}) {
    # The host's time first: the template's clock stood still while saved.
    if (defined $v{time}) { set_clock($v{time}) }
    # The host's bytes mixed in, then an explicit reseed (0x5207 is
    # RNDRESEEDCRNG); the VM generation ID device has changed too.
    open(my $u, '>', "$R/dev/urandom") or die "urandom: $!\n";
    syswrite($u, $v{entropy}) or die "urandom: $!\n";
    ioctl($u, 0x5207, 0) or die "RNDRESEEDCRNG: $!\n";
    close $u;
    if (open(my $k, '>', "$R/dev/kmsg")) { print $k "fleet: crng reseeded (RNDRESEEDCRNG) for a new clone\n"; close $k }
    put("$R/etc/machine-id", $v{machine_id});
}
put("$R/etc/hostname", "$v{hostname}\n");
if (open(my $h, '>', "$R/proc/sys/kernel/hostname")) { print $h $v{hostname}; close $h }
my @hosts;
if (open(my $f, '<', "$R/etc/hosts")) { @hosts = grep { !/^127\.0\.1\.1\s/ } <$f>; close $f }
put("$R/etc/hosts", join('', @hosts) . "127.0.1.1 $v{hostname}\n");
unlink grep { !m{/ssh_host_ed25519_key(\.pub)?$} } glob("$R/etc/ssh/ssh_host_*");
umask 077;
put("$R/etc/ssh/ssh_host_ed25519_key", $v{host_key}, '0600');
put("$R/etc/ssh/ssh_host_ed25519_key.pub", $v{host_key_pub}, '0644');
my (undef, undef, $uid, $gid) = getpwnam($v{user});
defined $uid or die "no user $v{user}\n";
my $ssh = "$R$v{home}/.ssh";
mkdirs($ssh);
chmod 0700, $ssh;
chown $uid, $gid, $ssh;
put("$ssh/authorized_keys", $v{user_key}, '0600');
chown $uid, $gid, "$ssh/authorized_keys";
umask 022;
if ($v{fork} && length $v{forget_env}) {
    my %forget = map { $_ => 1 } split / /, $v{forget_env};
    my @env;
    if (open(my $f, '<', "$R/etc/environment")) { @env = grep { !(/^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=/ && $forget{$1}) } <$f>; close $f }
    put("$R/etc/environment", join('', @env), '0644');
}
for my $file (@files) {
    my ($path, $data, $mode, $append) = @$file;
    (my $dir = "$R$path") =~ s{/[^/]*$}{};
    mkdirs($dir);
    put("$R$path", $data, $mode, $append);
}
if (length $v{instance}) {
    # This instance's seed is applied: a later boot of it (after fleet
    # stop) must not append the seed's files again. The marker goes to
    # disk only after everything it vouches for: a crash before it, and
    # the next boot applies the seed again.
    flush_disks();
    mkdirs("$R/var/lib/agentfleet");
    put("$R/var/lib/agentfleet/seeded-instance", "$v{instance}\n");
}
flush_disks();
if ($v{restored}) {
    # Before OpenSSH 9.8 (Debian 12, Ubuntu 24.04) every connection's sshd
    # is a new exec that reads the host keys from disk: the listener is
    # left alone, where a SIGHUP re-execs it and refuses connections for
    # most of a second under emulation. From 9.8 the listener holds the
    # keys for its sshd-session children and rereads them on SIGHUP.
    # Docker rereads its proxy settings on restart (only if it ever
    # started: it is socket-activated).
    if (-e "$R/usr/lib/openssh/sshd-session") {
        open(my $p, '<', "$R/run/sshd.pid") or die "sshd is not running: $!\n";
        my $pid = <$p>;
        close $p;
        kill('HUP', int($pid)) or die "reload sshd: $!\n";
    }
    if (!$v{fork} && -e "$R/run/docker.pid") { system('systemctl', 'restart', '--no-block', 'docker') == 0 or die "restart docker: $?\n" }
}
`
