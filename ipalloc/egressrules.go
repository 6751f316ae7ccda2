package ipalloc

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// EgressRule makes one machine's outbound traffic leave from its egress
// address: traffic from Address (the machine's) is source-NATed to
// Egress, the address of the machine's egress pair in the same family.
type EgressRule struct {
	App     string `json:"app"`
	Machine string `json:"machine"`
	Address string `json:"address"`
	Egress  string `json:"egress"`
}

// EgressRules is what GET /fly/egress-rules answers: the rules of every
// machine with an egress pair, the nftables script that installs them,
// and the pairs no rule could be written for.
type EgressRules struct {
	Rules   []EgressRule `json:"rules"`
	Skipped []string     `json:"skipped,omitempty"`
	NFT     string       `json:"nft"`
}

// EgressTable is the nftables table flyedge's egress rules live in; the
// script replaces it whole, and touches nothing else.
const EgressTable = "inet flyedge_egress"

// EgressRules returns the source-NAT rules of every machine that has an
// egress pair, across apps: a machine whose address is IPv4 leaves from
// the pair's IPv4 address, one whose address is IPv6 from its IPv6
// address. A machine whose address is a host name gets no rule (nftables
// matches addresses) and is listed in Skipped.
func (a *App) EgressRules() EgressRules {
	out := EgressRules{Rules: []EgressRule{}}
	a.store.read(func(st *state) {
		for app, as := range st.apps {
			for id, e := range as.egress {
				addr := a.machineAddress(st, app, id)
				ip, err := netip.ParseAddr(addr)
				if err != nil || ip.Zone() != "" {
					out.Skipped = append(out.Skipped, fmt.Sprintf("app %s machine %s: address %q is not an IP address without a zone", app, id, addr))
					continue
				}
				ip = ip.Unmap()
				egress := e.V4
				if ip.Is6() {
					egress = e.V6
				}
				out.Rules = append(out.Rules, EgressRule{App: app, Machine: id, Address: ip.String(), Egress: egress})
			}
		}
	})
	slices.SortFunc(out.Rules, func(x, y EgressRule) int {
		return cmp.Or(strings.Compare(x.App, y.App), strings.Compare(x.Machine, y.Machine))
	})
	slices.Sort(out.Skipped)
	out.NFT = NFTScript(out.Rules)
	return out
}

// machineAddress returns the address of machine id of app: registered
// through the API, else in the config. The caller holds the store's read
// lock.
func (a *App) machineAddress(st *state, app, id string) string {
	if as := st.apps[app]; as != nil {
		if m := as.machines[id]; m != nil {
			return m.Address
		}
	}
	if cfg := a.fly.AppConfig(app); cfg != nil {
		for _, m := range cfg.Machines {
			if m.ID == id {
				return m.Address
			}
		}
	}
	return ""
}

// NFTScript renders rules as one nftables transaction (`nft -f -`) that
// replaces the table flyedge_egress whole: the first two lines create it
// if missing and delete it, so the script works on a host with or
// without earlier rules, and nft applies all of it or nothing.
func NFTScript(rules []EgressRule) string {
	var b strings.Builder
	b.WriteString("# flyedge egress rules: each machine's outbound traffic leaves from its egress address.\n")
	b.WriteString("# Apply with: nft -f <this file> (one transaction; replaces table " + EgressTable + " only).\n")
	b.WriteString("table " + EgressTable + "\n")
	b.WriteString("delete table " + EgressTable + "\n")
	b.WriteString("table " + EgressTable + " {\n")
	b.WriteString("\tchain postrouting {\n")
	b.WriteString("\t\ttype nat hook postrouting priority srcnat; policy accept;\n")
	for _, r := range rules {
		family := "ip"
		if netip.MustParseAddr(r.Address).Is6() {
			family = "ip6"
		}
		fmt.Fprintf(&b, "\t\t%s saddr %s snat %s to %s comment \"app %s machine %s\"\n", family, r.Address, family, r.Egress, r.App, r.Machine)
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

// ApplyNFT runs script with `nft -f -`, within 10s.
func ApplyNFT(ctx context.Context, script string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("nft -f -: %w: %s", err, strings.TrimSpace(out.String()))
	}
	return nil
}

// egressApplied is the script this process applied last, so a change
// that leaves the rules as they are runs nothing; pending is set while a
// run is due that has not read the state yet.
var egressApplied struct {
	sync.Mutex
	script  string
	pending atomic.Bool
}

// scheduleEgressRules applies the rules soon, off the store's goroutine
// (nft may take its time; changes must not wait for it). Runs are one at
// a time, and each reads the state when it starts, so the last one
// applies the latest rules; changes meanwhile share a run.
func (a *App) scheduleEgressRules() {
	if egressApplied.pending.CompareAndSwap(false, true) {
		go a.applyEgressRules()
	}
}

// applyEgressRules installs the current rules when they differ from the
// ones applied last (apply_egress_rules).
func (a *App) applyEgressRules() {
	egressApplied.Lock()
	defer egressApplied.Unlock()
	egressApplied.pending.Store(false)
	rules := a.EgressRules()
	if rules.NFT == egressApplied.script {
		return
	}
	if err := ApplyNFT(context.Background(), rules.NFT); err != nil {
		a.logger.Error("applying the egress rules", zap.Error(err))
		return
	}
	egressApplied.script = rules.NFT
	a.logger.Info("egress rules applied", zap.Int("rules", len(rules.Rules)), zap.Strings("skipped", rules.Skipped))
}
