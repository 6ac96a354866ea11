// Package e2etest drives the built `handler` binary from outside, through
// its public HTTP API and the ARM simulator's paths only: `handler local` on a
// real port, and Functions mode under the host simulator (handler/hostsim)
// on Azurite, the Service Bus double and the ARM simulator, with one or more
// handler instances.
package e2etest
