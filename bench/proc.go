package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of the times in /proc/PID/stat. It is 100
// on every Linux architecture Go supports (sysconf(_SC_CLK_TCK) needs cgo).
const clockTicks = 100

// procStat is the part of /proc/PID/stat the bench uses.
type procStat struct {
	ppid               int
	utime, stime       float64 // seconds
	cutime, cstime     float64 // seconds, of waited-for children
	rssBytes, hwmBytes int64   // from /proc/PID/status
	comm               string
}

func readProc(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	// comm is in parentheses and may hold spaces: split after the last ')'.
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < 0 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(s[end+1:])
	// f[0] is field 3 (state); utime is field 14 → f[11].
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	tick := func(i int) float64 { v, _ := strconv.ParseFloat(f[i], 64); return v / clockTicks }
	ppid, _ := strconv.Atoi(f[1])
	st := procStat{ppid: ppid, comm: s[open+1 : end], utime: tick(11), stime: tick(12), cutime: tick(13), cstime: tick(14)}
	return st, nil
}

// readMem adds the resident sizes from /proc/PID/status to st.
func readMem(pid int, st *procStat) error {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err == nil {
		for _, line := range strings.Split(string(status), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			kb := func() int64 {
				n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				return n << 10
			}
			switch k {
			case "VmRSS":
				st.rssBytes = kb()
			case "VmHWM":
				st.hwmBytes = kb()
			}
		}
	}
	return err
}

// treeUsage is the CPU time (user+system, seconds) of the process tree rooted
// at each of roots, including children that already exited and were waited
// for, and the pids of the tree.
func treeUsage(roots ...int) (cpu float64, members []int) {
	parent := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	stats := map[int]procStat{}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := readProc(p); err == nil {
			stats[p] = st
			parent[st.ppid] = append(parent[st.ppid], p)
		}
	}
	var walk func(pid int)
	walk = func(pid int) {
		st, ok := stats[pid]
		if !ok {
			return
		}
		cpu += st.utime + st.stime + st.cutime + st.cstime
		members = append(members, pid)
		for _, c := range parent[pid] {
			walk(c)
		}
	}
	for _, r := range roots {
		walk(r)
	}
	return cpu, members
}

// pss is the proportional set size of pid (its private pages plus its share
// of the pages it shares), which unlike RSS can be summed over processes.
func pss(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Pss:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n << 10
		}
	}
	return 0
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func freePort() (int, error) {
	a, err := freeAddr()
	if err != nil {
		return 0, err
	}
	_, p, _ := net.SplitHostPort(a)
	return strconv.Atoi(p)
}

// waitListening waits until something accepts connections on addr.
func waitListening(ctx context.Context, addr string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listens on %s after %v: %w", addr, limit, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stopProcess sends SIGTERM to p (a process this bench started), waits for
// done to close, and sends SIGKILL after grace.
func stopProcess(p *os.Process, done <-chan struct{}, grace time.Duration) {
	if p == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	p.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(grace):
		p.Kill()
		<-done
	}
}

func isRoot() bool { return os.Geteuid() == 0 }

// makeTempDir creates the bench's temporary directory, readable by the
// unprivileged users Postfix and OpenDKIM drop to.
func makeTempDir() (string, error) {
	dir, err := os.MkdirTemp("", "hermod-bench-")
	if err != nil {
		return "", err
	}
	dir, _ = filepath.EvalSymlinks(dir)
	return dir, os.Chmod(dir, 0o755)
}

// selfCPU is the CPU time (user+system, seconds) of the bench process: the
// load generator and the in-process sink, which share the machine with the
// MTA under test.
func selfCPU() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// loadAvg returns the 1-minute load average.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}
