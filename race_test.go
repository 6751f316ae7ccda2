//go:build race

package flyedge_test

// raceEnabled builds the Caddy under test with the race detector too.
const raceEnabled = true
