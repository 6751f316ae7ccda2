//go:build race

package e2e

// raceEnabled builds the Caddy under test with the race detector too.
const raceEnabled = true
