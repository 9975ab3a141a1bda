// Package layout names every file and folder agentfleet keeps on the host,
// in one place, each with a line saying who writes it (as lima's
// limatype/filenames does). It imports only the standard library, so any
// package may use it, the Packer plugin included.
//
// FLEET_HOME (Home) holds:
//
//	fleets/<fleet>/                 one folder per fleet (Paths.FleetDir)
//	  state.json lock id_ed25519 known_hosts spawning.json
//	  parker.lock parker.pid parker.log
//	  results/ rolled-back/
//	  machines/<vm>/                a machine folder (Paths.MachineDir)
//	images/<name>/<version>/        the image store: disk.qcow2, manifest.json,
//	                                exports, warm/<key>/ templates
//	images/<name>/latest[-<arch>]   the promoted version of an architecture
//	virtualbox/                     the VirtualBox driver's own state
//	tmp/ cache/                     the builder's scratch and cache
//
// A machine folder's life has one order:
//  1. The driver's Create makes the folder (vm.Spec.Dir) and writes its
//     files: the disk, the seed, its records.
//  2. After Create returns, the controller writes its files: policy,
//     credentials, proxy limits and spend before Start, known_hosts when
//     rsync first needs it. While the machine runs, the driver's console
//     logger and the proxies write theirs (the controller stops the
//     proxies before Delete).
//  3. Delete removes the folder whole. Nothing but the files named here is
//     put in it, except by the hypervisor itself (VirtualBox keeps its VM
//     folder, <name>/ with its .vbox, Logs/ and Snapshots/, under it), and
//     nothing of the machine lives outside it (sockets too long for a
//     path go to the temp dir, named after the folder).
package layout

// Every file of a machine's folder (vm.Spec.Dir, Paths.MachineDir).
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
	CompactFile    = "compact.state"   // device state and written RAM handed to a machine's next process while it is compacted, then removed
	VirtualBoxRec  = "virtualbox.json" // the VirtualBox VM's name and SSH port
	SlurmJobFile   = "slurm-job.json"  // the Slurm driver's job id, node and SSH address (controller side)
	SlurmSeedFile  = "slurm-seed.json" // the identity seed Create was given, for the node when the job runs (as seed.iso is, owner-only)

	// Written by the controller (fleet/), after Create.
	PolicyFile      = "egress.json"       // the egress policy, changed by fleet net allow|deny
	CredentialsFile = "credentials.json"  // the credential proxy's per-machine token and upstream
	ProxyLimitsFile = "proxy-limits.json" // connection cap and idle timeout of the proxies
	SpendFile       = "spend.json"        // the credential proxy's budget and prices, changed by fleet net budget
	KnownHostsFile  = "known_hosts"       // the machine's pinned host key, for rsync's OpenSSH client
	AwakeLock       = "awake.lock"        // held shared by commands using the machine (exec, ssh, attach), exclusively by the idle parker while it suspends it

	// Written by the proxies (internal/egress), a server per machine.
	AuditFile      = "egress.log"       // every proxy decision; rotates to egress.log.1
	ProxySocket    = "proxy.sock"       // where per-connection shims hand sockets over
	ProxyLock      = "proxy.lock"       // held while a proxy server runs
	ProxyPIDFile   = "proxy.pid"        // the proxy server's pid
	ProxyErrorsLog = "proxy-errors.log" // what the shims and the server could not tell the guest
	UsageFile      = "usage.json"       // tokens and cost the credential proxy counted
)

// ProxyFiles are the controller's files the proxies read: a driver whose
// machines run on another host copies them there (and again when the
// controller changes one). ProxyOutputs are what the proxies write, which
// it copies back before the controller reads them.
var (
	ProxyFiles   = []string{PolicyFile, CredentialsFile, ProxyLimitsFile, SpendFile}
	ProxyOutputs = []string{AuditFile, UsageFile, ProxyErrorsLog}
)

// Folders of FLEET_HOME.
const (
	FleetsFolder     = "fleets"     // one folder per fleet, made by the controller
	ImagesFolder     = "images"     // the image store, written by images/ (build, pull, promote, prune)
	VirtualBoxFolder = "virtualbox" // the VirtualBox driver's registry lock and template records
	TmpFolder        = "tmp"        // the builder's scratch folders, one per build
	CacheFolder      = "cache"      // the builder's cache (FLEET_CACHE moves it)
)

// The builder's cache folder (CacheFolder, or FLEET_CACHE).
const (
	CacheImagesFolder = "images" // finished disks by recipe hash, the builder's sidecar files beside each
)

// Every file of a fleet's folder (Paths.FleetDir), all written by the
// controller.
const (
	StateFile        = "state.json"    // the fleet's machines, written under the lock
	LockFile         = "lock"          // held by a command that changes the state
	KeyFile          = "id_ed25519"    // the fleet's SSH client key
	PublicKeySuffix  = ".pub"          // KeyFile+".pub": its public half
	FleetKnownHosts  = "known_hosts"   // every machine's pinned host key, for fleet ssh-config
	SpawningFile     = "spawning.json" // what a running spawn is making, read by fleet ls
	ResultsFolder    = "results"       // collected results: the user's, kept by destroy
	MachinesFolder   = "machines"      // one machine folder per machine
	RolledBackFolder = "rolled-back"   // serial consoles (<vm>.serial.log) of machines a failed spawn removed
	ForksFolder      = "forks"         // forks/<id>: a running machine captured by fleet fork (a template's files), kept while a child's disk links to it
	ForkBackingFile  = "backing"       // forks/<id>/backing: the disk the captured disk links to (the source's), so prune keeps the whole chain
	ParkerLock       = "parker.lock"   // held while the fleet's idle parker (fleet __park) runs: at most one
	ParkerPIDFile    = "parker.pid"    // the idle parker's pid
	ParkerLog        = "parker.log"    // what the idle parker did and could not do; rotates to parker.log.1
	QueueLog         = "queue.log"     // what the background start of machines queued at spawn (Slurm) did
)

// The image store (FLEET_HOME/images), written by images/.
const (
	ImageDisk      = "disk.qcow2"    // a version's read-only base disk; the builder names its working disk the same
	ManifestFile   = "manifest.json" // what a version is made of; its exports take the names it lists, none of these
	WarmFolder     = "warm"          // a version's warm templates, one folder per key (written by fleet/ through images/)
	PrebuildFolder = "prebuilds"     // a version's prebuilds (templates made after a project's setup ran), one owner-only folder per key (written by fleet/ through images/)
	LatestLink     = "latest"        // <name>/latest is amd64's promoted version, latest-<arch> another's
	StagingPrefix  = ".staging-"     // <name>/.staging-<version>: a build being added
	PullPrefix     = ".pull-"        // <name>/.pull-<version>: a pull being added
	PrunePrefix    = ".prune-"       // <name>/.prune-<version>: a version being removed
	UploadsFolder  = ".uploads"      // the registry push's resumable upload state, at the store's root
)

// Every file of a warm template's folder (warm/<key>/) or a prebuild's
// (prebuilds/<key>/), made by fleet/ and published read-only by images/.
const (
	TemplateDisk   = "disk.qcow2"    // the frozen disk, an overlay on the version's disk (a prebuild's may be on its warm template's)
	TemplateMemory = "memory"        // the guest's RAM; clones map it copy-on-write
	TemplateState  = "state"         // device state only
	TemplateMeta   = "template.json" // the key and shape it was made with

	TemplateStagingPrefix = ".make-" // warm/.make-<random> (or prebuilds/): a template being made
	TemplateLockSuffix    = ".lock"  // warm/<key>.lock (or prebuilds/): held by the one maker of that key
	// prebuilds/<key>.on-hosts.json: a prebuild made on another host (a
	// Slurm node) for this version, where and when (written by fleet/)
	HostPrebuildRecordSuffix = ".on-hosts.json"
)

// A Slurm node's folder (slurm node_dir, default /var/tmp/agentfleet),
// written by the job's fleet process (internal/vm/slurm): u<uid>/ per
// user, owner-only, holding
const (
	NodeImagesFolder    = "images"      // u<uid>/images/sha256-<digest>: image files copied to the node, checked by digest
	NodeImageLocks      = "image-locks" // u<uid>/image-locks/sha256-<digest>: held while a job copies that file in
	NodeJobPrefix       = "job-"        // u<uid>/job-<id>/: one job's machine folder, removed when the job ends
	NodeTemplatesFolder = "templates"   // u<uid>/templates/<disk digest>/warm/<key>/: warm templates made on the node, kept across jobs
	NodeControlFile     = "ctl.sock"    // job-<id>/ctl.sock: where srun's relay reaches the job's process
)

// Files of the VirtualBox driver's folder (FLEET_HOME/virtualbox).
const (
	VirtualBoxLock      = "registry.lock" // serializes VirtualBox registry operations host-wide
	VirtualBoxTemplates = "templates"     // the imported template VMs' folders, and each one's clone list
	ClonesSuffix        = ".clones.json"  // templates/<template>.clones.json: the machines cloned from it
)
