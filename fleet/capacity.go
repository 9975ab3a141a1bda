package fleet

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// MemAvailableMiB reads the kernel's estimate of memory available for new
// work. It returns 0 when unknown (not Linux).
func MemAvailableMiB() int {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemAvailable:" {
			kb, _ := strconv.Atoi(fields[1])
			return kb / 1024
		}
	}
	return 0
}

// CheckMemory refuses a spawn whose guests together would need more memory
// than the host has available.
func CheckMemory(count, memMiB int) error {
	return checkMemory(count, memMiB, MemAvailableMiB())
}

func checkMemory(count, memMiB, availMiB int) error {
	if availMiB == 0 {
		return nil
	}
	need := count * memMiB
	if need > availMiB {
		return fmt.Errorf("not enough memory: %d machine(s) x %d MiB = %d MiB, but only %d MiB is available (use fewer machines, a smaller --memory, or --force)", count, memMiB, need, availMiB)
	}
	return nil
}
