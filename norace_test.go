//go:build !race

package flyedge_test

const raceEnabled = false
