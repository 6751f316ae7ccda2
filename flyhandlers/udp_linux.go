//go:build linux

package flyhandlers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/net/ipv4"
)

// listenUDP opens the edge's socket on port: every IPv4 address, with
// SO_REUSEPORT (so a config reload overlaps without a gap, as Caddy's own
// listeners do) and IP_PKTINFO.
func listenUDP(port int) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, 0xf /* SO_REUSEPORT */, 1)
		})
		return errors.Join(err, serr)
	}}
	c, err := lc.ListenPacket(context.Background(), "udp4", ":"+strconv.Itoa(port))
	if err != nil {
		return nil, err
	}
	conn := c.(*net.UDPConn)
	if err := ipv4.NewPacketConn(conn).SetControlMessage(ipv4.FlagDst, true); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("IP_PKTINFO: %w", err)
	}
	return conn, nil
}

// pktinfoDst returns the header destination address of an IP_PKTINFO
// control message (struct in_pktinfo: ifindex, spec_dst, addr).
func pktinfoDst(oob []byte) (netip.Addr, bool) {
	const hdr = syscall.SizeofCmsghdr
	for len(oob) >= hdr {
		h := (*syscall.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < hdr || l > len(oob) {
			return netip.Addr{}, false
		}
		if h.Level == syscall.IPPROTO_IP && h.Type == syscall.IP_PKTINFO && l >= hdr+12 {
			return netip.AddrFrom4([4]byte(oob[hdr+8 : hdr+12])), true
		}
		oob = oob[min(len(oob), (l+7)&^7):]
	}
	return netip.Addr{}, false
}
