//go:build !linux

package flyhandlers

import (
	"errors"
	"net"
	"net/netip"
)

// listenUDP fails: the edge reads each datagram's destination with
// IP_PKTINFO and binds with SO_REUSEPORT as Linux has them.
func listenUDP(int) (*net.UDPConn, error) {
	return nil, errors.New("UDP services need Linux")
}

func pktinfoDst([]byte) (netip.Addr, bool) { return netip.Addr{}, false }
