package vm

// Every file of a machine's folder (Spec.Dir), named in one place, with
// who writes it. Nothing else is ever put there, and Delete removes the
// folder whole.
const (
	// Written by the driver.
	DiskFile       = "disk.qcow2"      // the linked clone (qemu)
	SeedFile       = "seed.iso"        // NoCloud identity seed
	SerialFile     = "serial.log"      // the guest's serial console (the console logger's, rotating to serial.log.1)
	ConsoleSocket  = "console.sock"    // where QEMU serves the console to its logger (or a short path in the temp dir)
	PIDFile        = "qemu.pid"        // the hypervisor process (qemu)
	QMPFile        = "qmp.sock"        // QEMU's control socket (or a short path in the temp dir)
	GuestAgentFile = "qga.sock"        // the QEMU guest agent's port, host side (likewise)
	VirtiofsFile   = "virtiofs.sock"   // virtiofsd's socket, --sync shared
	VirtiofsdLog   = "virtiofsd.log"   // virtiofsd's own log
	SuspendFile    = "suspend.state"   // RAM and device state of a suspended machine
	VirtualBoxRec  = "virtualbox.json" // the VirtualBox VM's name and SSH port

	// Written by the controller (fleet/).
	PolicyFile      = "egress.json"       // the egress policy, changed by fleet net allow|deny
	CredentialsFile = "credentials.json"  // the credential proxy's per-machine token and upstream
	ProxyLimitsFile = "proxy-limits.json" // connection cap and idle timeout of the proxies
	SpendFile       = "spend.json"        // the credential proxy's budget and prices, changed by fleet net budget

	// Written by the proxies (internal/egress), a server per machine.
	AuditFile      = "egress.log"       // every proxy decision; rotates to egress.log.1
	ProxySocket    = "proxy.sock"       // where per-connection shims hand sockets over
	ProxyLock      = "proxy.lock"       // held while a proxy server runs
	ProxyPIDFile   = "proxy.pid"        // the proxy server's pid
	ProxyErrorsLog = "proxy-errors.log" // what the shims and the server could not tell the guest
	UsageFile      = "usage.json"       // tokens and cost the credential proxy counted
)
