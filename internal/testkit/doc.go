// Package testkit holds what flyedge's tests share: a scratch PostgreSQL
// database, a TCP proxy a test can cut to play a network outage, and the
// machines (HTTP and TCP) that stand behind an edge. Only tests import
// it.
package testkit
