package ipalloc

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestNFTScript: the rules render as one nftables transaction that
// replaces flyedge's table, an IPv4 and an IPv6 rule; nft accepts the
// script (checked in a network namespace of its own, where nft and root
// are at hand).
func TestNFTScript(t *testing.T) {
	script := NFTScript([]EgressRule{
		{App: "web", Machine: "148ed193b95189", Address: "10.0.0.2", Egress: "192.0.2.10"},
		{App: "web", Machine: "3d8d9e4b2c1a77", Address: "fd00::2", Egress: "2001:db8::10"},
	})
	for _, want := range []string{
		"table inet flyedge_egress\ndelete table inet flyedge_egress\ntable inet flyedge_egress {\n",
		"type nat hook postrouting priority srcnat; policy accept;",
		"ip saddr 10.0.0.2 snat ip to 192.0.2.10 comment \"app web machine 148ed193b95189\"",
		"ip6 saddr fd00::2 snat ip6 to 2001:db8::10 comment \"app web machine 3d8d9e4b2c1a77\"",
	} {
		if !strings.Contains(script, want) {
			t.Errorf("script lacks %q:\n%s", want, script)
		}
	}
	if _, err := exec.LookPath("nft"); err != nil || os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true: this test needs nft and root")
		}
		t.Skip("needs nft and root")
	}
	for _, s := range []string{script, NFTScript(nil)} {
		cmd := exec.Command("unshare", "--net", "nft", "-c", "-f", "-")
		cmd.Stdin = strings.NewReader(s)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nft -c refuses the script: %v\n%s\n%s", err, out, s)
		}
	}
}
