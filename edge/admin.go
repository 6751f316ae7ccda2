package edge

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// checkAdmin fails when another process listens on the admin endpoint of
// the config ctx belongs to. Caddy binds it with SO_REUSEPORT, so a
// second Caddy started with the same admin address (the demo started
// twice, say) binds it too, and the two would split the admin calls and
// the connections of every other shared port in silence.
func (e *Edge) checkAdmin(ctx caddy.Context) error {
	listen, ok := adminListen(ctx)
	if !ok {
		return nil
	}
	na, err := caddy.ParseNetworkAddress(caddy.NewReplacer().ReplaceAll(listen, ""))
	if err != nil || na.IsUnixNetwork() || na.PortRangeSize() != 1 {
		return nil // Caddy refused it already, or not TCP
	}
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(na.Host); err == nil {
		ips = []netip.Addr{ip}
	} else if na.Host == "" {
		ips = []netip.Addr{netip.IPv6Unspecified()}
	} else {
		lookup, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		ips, err = net.DefaultResolver.LookupNetIP(lookup, "ip", na.Host)
		cancel()
		if err != nil {
			e.logger.Warn("cannot tell whether another process serves the admin endpoint", zap.String("address", listen), zap.Error(err))
			return nil
		}
	}
	port := int(na.StartPort)
	for _, ip := range ips {
		foreign, err := ForeignListeners("tcp", ip, func(p int) bool { return p == port })
		if err != nil {
			e.logger.Warn("cannot tell whether another process serves the admin endpoint", zap.String("address", listen), zap.Error(err))
			return nil
		}
		if len(foreign) > 0 {
			return fmt.Errorf("admin endpoint %s is already served by %s; stop it first", listen, foreign[0].Process())
		}
	}
	return nil
}

// adminListen returns the address of the admin endpoint of the config
// ctx belongs to, false when it has none. Caddy gives a module neither
// its config nor this address, so it is read by reflection from the
// context's unexported config (cfg.Admin, which Caddy fills with its
// default before it provisions the apps of a config it runs);
// TestAdminListen fails when a Caddy version moves it.
func adminListen(ctx caddy.Context) (string, bool) {
	cfg := reflect.ValueOf(ctx).FieldByName("cfg")
	if cfg.Kind() != reflect.Pointer || cfg.IsNil() {
		return "", false
	}
	admin := cfg.Elem().FieldByName("Admin")
	if admin.Kind() != reflect.Pointer || admin.IsNil() {
		return "", false
	}
	disabled, listen := admin.Elem().FieldByName("Disabled"), admin.Elem().FieldByName("Listen")
	if disabled.Kind() != reflect.Bool || listen.Kind() != reflect.String || disabled.Bool() {
		return "", false
	}
	if listen.String() == "" {
		return caddy.DefaultAdminListen, true
	}
	return listen.String(), true
}
