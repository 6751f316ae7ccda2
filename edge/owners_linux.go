//go:build linux

package edge

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ForeignListeners returns the sockets of other processes that listen on
// one of the ports (network "tcp": in LISTEN; "udp": bound and not
// connected) at an address that overlaps ip: the same address, or either
// is a wildcard. Caddy binds with SO_REUSEPORT, so such a socket does not
// make a bind fail: the kernel spreads the connections over both
// processes. It reads /proc/net and /proc/<pid>/fd.
func ForeignListeners(network string, ip netip.Addr, ports func(int) bool) ([]ForeignListener, error) {
	first, err := notOwn(network, ip, ports)
	if err != nil || len(first) == 0 {
		return nil, err
	}
	// a socket this process closes while it is read (the admin endpoint
	// of the config a load replaces) leaves its descriptor before the
	// kernel's table: only a socket seen again a moment later counts
	time.Sleep(100 * time.Millisecond)
	again, err := notOwn(network, ip, ports)
	if err != nil {
		return nil, err
	}
	var foreign []ForeignListener
	for _, s := range again {
		if slices.Contains(first, s) {
			foreign = append(foreign, ForeignListener{Addr: s.addr, Owner: ownerOf(s.inode)})
		}
	}
	return foreign, nil
}

// procSocket is a socket of /proc/net's tables.
type procSocket struct {
	addr  netip.AddrPort
	inode string
}

// notOwn returns the listening sockets that ForeignListeners looks for
// and this process does not hold.
func notOwn(network string, ip netip.Addr, ports func(int) bool) ([]procSocket, error) {
	files, state := []string{"/proc/net/tcp", "/proc/net/tcp6"}, "0A"
	if network == "udp" {
		files, state = []string{"/proc/net/udp", "/proc/net/udp6"}, "07"
	}
	var found []procSocket
	for _, f := range files {
		b, err := os.ReadFile(f)
		if errors.Is(err, fs.ErrNotExist) { // no IPv6
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, line := range bytes.Split(b, []byte("\n"))[1:] {
			fields := strings.Fields(string(line))
			if len(fields) < 10 || fields[3] != state || fields[9] == "0" {
				continue
			}
			if network == "udp" && !strings.HasSuffix(fields[2], ":0000") { // connected
				continue
			}
			addr, err := parseProcAddr(fields[1])
			if err != nil {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
			if ports(int(addr.Port())) && overlaps(ip, addr.Addr()) {
				found = append(found, procSocket{addr, fields[9]})
			}
		}
	}
	if len(found) == 0 {
		return nil, nil
	}
	own := socketInodes("self")
	return slices.DeleteFunc(found, func(s procSocket) bool { return own[s.inode] }), nil
}

// overlaps tells whether a socket bound to a and one bound to b take
// connections for a common address.
func overlaps(a, b netip.Addr) bool {
	a, b = a.Unmap(), b.Unmap()
	switch {
	case a == b:
		return true
	case a.IsUnspecified() && a.Is6(), b.IsUnspecified() && b.Is6(): // [::] takes IPv4 too
		return true
	case a.IsUnspecified():
		return b.Is4()
	case b.IsUnspecified():
		return a.Is4()
	}
	return false
}

// parseProcAddr parses an address of /proc/net/{tcp,udp}{,6}: the
// address in hexadecimal 32-bit words in host byte order, a colon, the
// port in hexadecimal.
func parseProcAddr(s string) (netip.AddrPort, error) {
	h, p, ok := strings.Cut(s, ":")
	port, err := strconv.ParseUint(p, 16, 16)
	if !ok || err != nil || (len(h) != 8 && len(h) != 32) {
		return netip.AddrPort{}, fmt.Errorf("address %q: not in /proc/net's form", s)
	}
	raw, err := hex.DecodeString(h)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("address %q: %w", s, err)
	}
	for i := 0; i < len(raw); i += 4 {
		binary.NativeEndian.PutUint32(raw[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	addr, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(addr, uint16(port)), nil
}

// socketInodes returns the inodes of the sockets process pid ("self" or
// a number) holds.
func socketInodes(pid string) map[string]bool {
	inodes := make(map[string]bool)
	fds, _ := os.ReadDir("/proc/" + pid + "/fd")
	for _, fd := range fds {
		l, _ := os.Readlink("/proc/" + pid + "/fd/" + fd.Name())
		if inode, ok := strings.CutPrefix(l, "socket:["); ok {
			inodes[strings.TrimSuffix(inode, "]")] = true
		}
	}
	return inodes
}

// ownerOf names the process that holds socket inode, as well as this
// process may see it.
func ownerOf(inode string) string {
	self := strconv.Itoa(os.Getpid())
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid := p.Name()
		if pid == self || pid[0] < '0' || pid[0] > '9' {
			continue
		}
		if socketInodes(pid)[inode] {
			cmd, _ := os.ReadFile("/proc/" + pid + "/cmdline")
			line := strings.TrimSpace(strings.ReplaceAll(string(cmd), "\x00", " "))
			if len(line) > 120 {
				line = line[:120] + "…"
			}
			return fmt.Sprintf("pid %s: %s", pid, line)
		}
	}
	return ""
}
