// tlsload is the load generator and backend of the TLS rows of
// bench/l4/run.sh: TLS from the client to the proxy, plaintext from the
// proxy to the backend (or TLS all the way to a direct backend).
//
//	tlsload -serve 127.0.0.1:15220 -sink                 plaintext sink (bulk backend)
//	tlsload -serve 127.0.0.1:15221 -sink -cert c -key k  TLS sink (bulk, direct)
//	tlsload -serve 127.0.0.1:15231 -cert c -key k        TLS echo (conn, direct)
//	tlsload -target 127.0.0.1:15226 -bulk -P 4 -d 8s     bulk: P streams write for -d
//	    prints: bytes=B errors=E seconds=S gbps=G
//	tlsload -target 127.0.0.1:15236 -c 32 -d 8s          conn: each worker loops a full
//	    handshake (no resumption), write 1 byte, read it back, close
//	    prints: conns=N errors=E seconds=S rate=R
//
// The client offers TLS 1.3 with X25519 only, so every server does the same
// key exchange (Go's default would add X25519MLKEM768, which OpenSSL 3.0
// lacks), and trusts any certificate for -servername.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	serve := flag.String("serve", "", "run a backend on this address")
	sink := flag.Bool("sink", false, "backend: discard what arrives instead of echoing it")
	cert := flag.String("cert", "", "backend: TLS certificate (PEM); plaintext without it")
	key := flag.String("key", "", "backend: TLS key (PEM)")
	target := flag.String("target", "", "client: address to connect to")
	bulk := flag.Bool("bulk", false, "client: bulk throughput instead of new connections")
	streams := flag.Int("P", 1, "client, bulk: parallel streams")
	workers := flag.Int("c", 32, "client, conn: concurrent workers")
	dur := flag.Duration("d", 8*time.Second, "client: how long to run")
	name := flag.String("servername", "bench.test", "client: TLS server name")
	flag.Parse()
	switch {
	case *serve != "":
		runServer(*serve, *sink, *cert, *key)
	case *target != "":
		cfg := &tls.Config{
			ServerName:         *name,
			InsecureSkipVerify: true,
			MinVersion:         tls.VersionTLS13,
			CurvePreferences:   []tls.CurveID{tls.X25519},
		}
		if *bulk {
			runBulk(*target, cfg, *streams, *dur)
		} else {
			runConns(*target, cfg, *workers, *dur)
		}
	default:
		flag.Usage()
		os.Exit(2)
	}
}

func runServer(addr string, sink bool, certFile, keyFile string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatal(err)
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			log.Fatal(err)
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}})
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			defer c.Close()
			if sink {
				io.Copy(io.Discard, c)
			} else {
				io.Copy(c, c)
			}
		}()
	}
}

func runBulk(target string, cfg *tls.Config, streams int, dur time.Duration) {
	var total, errs atomic.Int64
	secs := forEach(streams, dur, func(deadline time.Time) {
		c, err := tls.Dial("tcp", target, cfg)
		if err != nil {
			errs.Add(1)
			return
		}
		defer c.Close()
		buf := make([]byte, 256<<10)
		for time.Now().Before(deadline) {
			n, err := c.Write(buf)
			total.Add(int64(n))
			if err != nil {
				errs.Add(1)
				return
			}
		}
	})
	fmt.Printf("bytes=%d errors=%d seconds=%.3f gbps=%.3f\n", total.Load(), errs.Load(), secs, float64(total.Load())*8/secs/1e9)
	if total.Load() == 0 {
		os.Exit(1)
	}
}

func runConns(target string, cfg *tls.Config, workers int, dur time.Duration) {
	var conns, errs atomic.Int64
	secs := forEach(workers, dur, func(deadline time.Time) {
		b := []byte{'x'}
		for time.Now().Before(deadline) {
			if err := oneConn(target, cfg, b); err != nil {
				errs.Add(1)
				continue
			}
			conns.Add(1)
		}
	})
	fmt.Printf("conns=%d errors=%d seconds=%.3f rate=%.1f\n", conns.Load(), errs.Load(), secs, float64(conns.Load())/secs)
	if conns.Load() == 0 {
		os.Exit(1)
	}
}

// forEach runs n workers until dur has passed and returns how many
// seconds they took.
func forEach(n int, dur time.Duration, worker func(deadline time.Time)) float64 {
	var wg sync.WaitGroup
	start := time.Now()
	for range n {
		wg.Go(func() { worker(start.Add(dur)) })
	}
	wg.Wait()
	return time.Since(start).Seconds()
}

func oneConn(target string, cfg *tls.Config, b []byte) error {
	d := &net.Dialer{Timeout: 2 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", target, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write(b); err != nil {
		return err
	}
	_, err = io.ReadFull(c, b)
	return err
}
