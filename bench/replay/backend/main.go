// Command backend plays the two machines of bench/replay.sh: on its first
// address a request to /replay is answered with a fly-replay instruction
// to the second machine; every other request gets "ok" and the size of
// the body it carried.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
)

func main() {
	a := flag.String("a", "127.0.66.1:9101", "the first machine's address")
	b := flag.String("b", "127.0.66.2:9101", "the second machine's address")
	target := flag.String("target", "", "the second machine's ID, where /replay goes")
	flag.Parse()
	for _, addr := range []string{*a, *b} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			log.Fatal(err)
		}
		first := addr == *a
		go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if first && r.URL.Path == "/replay" {
				w.Header().Set("Fly-Replay", "instance="+*target)
				w.WriteHeader(http.StatusTemporaryRedirect)
				return
			}
			n, _ := io.Copy(io.Discard, r.Body)
			fmt.Fprintf(w, "ok %d\n", n)
		}))
	}
	select {}
}
