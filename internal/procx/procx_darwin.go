package procx

import "golang.org/x/sys/unix"

// cmdline reads kern.procargs2: argc (int32), the executable's path, NUL
// padding, then argc NUL-terminated arguments and the environment. This
// path builds here but runs only on macOS.
func cmdline(pid int) (string, error) {
	b, err := unix.SysctlRaw("kern.procargs2", pid)
	if err != nil {
		return "", err
	}
	return parseProcargs(b), nil
}

func zombie(pid int) bool {
	kp, err := unix.SysctlKinfoProc("kern.proc.pid", pid)
	return err == nil && kp.Proc.P_stat == 5 // SZOMB
}
