package testkit

import (
	"encoding/json"
	"net"
	"net/http"
	"testing"
)

// Listen listens on a TCP address and closes the listener when the test
// ends.
func Listen(t testing.TB, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// Serve accepts connections on ln until it is closed (at the latest when
// the test ends) and hands each to handle in a goroutine of its own;
// handle owns the connection.
func Serve(t testing.TB, ln net.Listener, handle func(net.Conn)) {
	t.Helper()
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
}

// EchoMachine serves ln as a TCP machine: it answers each connection
// with its id and a space, then everything it reads back, and half-closes
// when the client does.
func EchoMachine(t testing.TB, ln net.Listener, id string) {
	t.Helper()
	Serve(t, ln, func(c net.Conn) {
		defer c.Close()
		c.Write([]byte(id + " "))
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				c.Write(buf[:n])
			}
			if err != nil {
				c.(*net.TCPConn).CloseWrite()
				return
			}
		}
	})
}

// Seen is what an HTTP machine reports of the request it received.
type Seen struct {
	Machine string      `json:"machine"`
	Region  string      `json:"region"`
	Proto   string      `json:"proto"`
	Host    string      `json:"host"`
	URI     string      `json:"uri"`
	Header  http.Header `json:"header"`
}

// HTTPMachine serves an HTTP machine on addr until the test ends: it
// speaks HTTP/1.1 and h2c and answers every request with the JSON of
// what it received (Seen). Closing the returned server takes the machine
// down.
func HTTPMachine(t testing.TB, addr, id, region string) *http.Server {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("machine %s: %v", id, err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(Seen{id, region, r.Proto, r.Host, r.RequestURI, r.Header})
		}),
		Protocols: new(http.Protocols),
	}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return srv
}
