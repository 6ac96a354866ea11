// Package e2etest drives a real `handler local` process (built binary, real
// port) through the public HTTP API and the ARM simulator's /_arm paths only.
package e2etest
