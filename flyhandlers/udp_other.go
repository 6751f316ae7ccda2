//go:build !linux

package flyhandlers

import (
	"errors"
	"net"
	"net/netip"

	"golang.org/x/net/ipv4"
)

// listenUDP fails: the edge reads each datagram's destination with
// IP_PKTINFO and binds with SO_REUSEPORT as Linux has them.
func listenUDP(int) (*net.UDPConn, *ipv4.PacketConn, error) {
	return nil, nil, errors.New("UDP services need Linux")
}

func pktinfoDst([]byte) (netip.Addr, bool) { return netip.Addr{}, false }
