package ipalloc

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/flyedge/caddy-flyedge/routing"
)

// TestCertAddressLikeNames: the certs API refuses names that browsers
// take for IPv4 addresses (the WHATWG URL standard's "ends in a
// number") and names under localhost, naming the reason; names that
// merely contain digits are host names.
func TestCertAddressLikeNames(t *testing.T) {
	ctx := context.Background()
	a := newNode(t, newFly(t, 1), t.TempDir(), testPools)
	for _, tc := range []struct{ host, why string }{
		{"127.1", "ends in a number, so browsers read it as an IPv4 address"},
		{"0x7f.0.0.1", "ends in a number"},
		{"0X7F.0.0.1", "ends in a number"},
		{"010.0.0.1", "ends in a number"},
		{"999.999.999.999", "ends in a number"},
		{"www.example.0x", "ends in a number"},
		{"shop.example.123", "ends in a number"},
		{"*.10.0.0", "ends in a number"},
		{"foo.localhost", "under localhost, which browsers and resolvers keep for the loopback"},
		{"*.localhost", "under localhost"},
		{"a.b.localhost.", "under localhost"},
	} {
		t.Run(tc.host, func(t *testing.T) {
			if _, _, err := a.AddCert(ctx, "app0", tc.host); statusOf(err) != 400 || !strings.Contains(err.Error(), tc.why) || !strings.HasPrefix(err.Error(), "hostname: ") {
				t.Errorf("AddCert(%s): %v (status %d), want 400 saying %q", tc.host, err, statusOf(err), tc.why)
			}
		})
	}
	for _, host := range []string{"1password.example.com", "x.0xg", "123.example.com", "localhost.example.com", "0x7f.example.net"} {
		if _, created, err := a.AddCert(ctx, "app0", host); err != nil || !created {
			t.Errorf("AddCert(%s): %v, created %t; want it added", host, err, created)
		}
	}
}

// TestCertClaimsAcrossOrgs: a name within another org's claim (under its
// wildcard or its name), or covering one, is refused 409 naming the
// claim and its app; apps of one org share a domain; siblings do not
// overlap; removing the other claim lifts the refusal.
func TestCertClaimsAcrossOrgs(t *testing.T) {
	ctx := context.Background()
	svc := []*routing.Service{{InternalPort: 8080, Ports: []*routing.Port{{Port: 443, Handlers: []string{"tls", "http"}}}}}
	fly := &routing.App{BaseDomain: "sub.edge.test", Apps: map[string]*routing.Application{
		"cfgvictim": {Org: "cfg", Services: svc, Hostnames: []string{"*.cfg-wild.com", "shop.cfg.com"}},
		"cfgsister": {Org: "victim", Services: svc},
	}}
	pctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := fly.Provision(pctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fly.Cleanup() })
	a := newNode(t, fly, t.TempDir(), testPools)
	for app, org := range map[string]string{"victim": "victim", "sister": "victim", "attacker": "evil", "loner": ""} {
		def := fmt.Sprintf(`{"org":%q,"services":[{"internal_port":8080,"ports":[{"port":443,"handlers":["tls","http"]}]}]}`, org)
		if org == "" {
			def = string(webApp(8080))
		}
		if _, _, err := a.PutApp(ctx, app, []byte(def), true); err != nil {
			t.Fatalf("creating app %s: %v", app, err)
		}
	}
	for _, host := range []string{"*.victim-wild.com", "www.victim.com"} {
		if _, _, err := a.AddCert(ctx, "victim", host); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		app, host string
		status    int
		why       string
	}{
		// under another org's wildcard or name
		{"attacker", "login.victim-wild.com", 409, "hostname login.victim-wild.com overlaps *.victim-wild.com, which app victim holds, and apps of different orgs do not share a domain (attacker: org evil, victim: org victim)"},
		{"attacker", "a.b.victim-wild.com", 409, "overlaps *.victim-wild.com"},
		{"attacker", "victim-wild.com", 409, "overlaps *.victim-wild.com"},
		{"attacker", "a.www.victim.com", 409, "overlaps www.victim.com"},
		// covering another org's name
		{"attacker", "*.victim.com", 409, "hostname *.victim.com overlaps www.victim.com, which app victim holds"},
		{"attacker", "victim.com", 409, "overlaps www.victim.com"},
		// an app in no org is another org to every app
		{"loner", "login.victim-wild.com", 409, "(loner: no org, victim: org victim)"},
		// a config app's hostnames are claims too
		{"attacker", "login.cfg-wild.com", 409, "overlaps *.cfg-wild.com, which app cfgvictim holds"},
		{"attacker", "*.cfg.com", 409, "overlaps shop.cfg.com, which app cfgvictim holds"},
		// a claim covering the edge's base domain
		{"attacker", "edge.test", 400, "covers the edge's base domain sub.edge.test"},
		// siblings do not overlap
		{"attacker", "api.victim.com", 201, ""},
		{"attacker", "victim-wild.com.evil.net", 201, ""},
		// one org shares its domains, config apps included
		{"sister", "login.victim-wild.com", 201, ""},
		{"cfgsister", "x.www.victim.com", 201, ""},
		// a sibling claim of another org keeps a wildcard out, even for the
		// first claimant's org
		{"sister", "*.victim.com", 409, "overlaps api.victim.com, which app attacker holds"},
		// and once one of them is in it, the others' claims keep out
		{"attacker", "*.login.victim-wild.com", 409, "overlaps *.victim-wild.com"},
	} {
		t.Run(tc.app+" adds "+tc.host, func(t *testing.T) { // in order: each sees the claims before it
			_, created, err := a.AddCert(ctx, tc.app, tc.host)
			if tc.status == 201 {
				if err != nil || !created {
					t.Errorf("%s adds %s: %v, created %t", tc.app, tc.host, err, created)
				}
				return
			}
			if statusOf(err) != tc.status || !strings.Contains(err.Error(), tc.why) {
				t.Errorf("%s adds %s: %v (status %d), want %d saying %q", tc.app, tc.host, err, statusOf(err), tc.status, tc.why)
			}
		})
	}
	// the operator's override: the other claims go, the name is free
	for _, c := range []struct{ app, host string }{{"victim", "*.victim-wild.com"}, {"sister", "login.victim-wild.com"}} {
		if err := a.RemoveCert(ctx, c.app, c.host); err != nil {
			t.Fatal(err)
		}
	}
	if _, created, err := a.AddCert(ctx, "attacker", "login.victim-wild.com"); err != nil || !created {
		t.Errorf("after the other claims were removed: %v, created %t", err, created)
	}
}
