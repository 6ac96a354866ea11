// Package hostsim plays the Azure Functions host for the jitaccess custom
// handler, so that tests, the fault test and the benchmark program can run
// the built `handler` binary in Functions mode as Azure would, without the
// host itself (Azure Functions Core Tools cannot be installed here).
//
// Start launches one or more handler processes (scale-out instances), each
// on its own FUNCTIONS_CUSTOMHANDLER_PORT with the app settings given, and
// waits as the host does (GET / until any HTTP answer). It then forwards
// HTTP from one front URL to the instances in turn, receives the Service
// Bus queue with sessions (per instance, host.json's maxConcurrentSessions
// receivers) and invokes the worker function in the host's payload shape,
// one message per invocation or, with "cardinality": "many", a batch of
// one session's messages from the instance's single batch receiver, one
// session at a time, as the Service Bus extension's batch loop does; it
// completes on 2xx and abandons (the whole batch) otherwise. FireTimer
// and SendEvent invoke the timer and Event Grid functions. Counters per
// instance say what the host did (invocations and failures by function,
// messages delivered, receives, completes, abandons). Instance.Kill takes
// one instance away mid-work, as a dying host instance goes.
//
// The payload shapes follow the host's source: HttpScriptInvocationContext
// built by ToHttpScriptInvocationContext (azure-functions-host,
// src/WebJobs.Script/Workers/MessageExtensions/ScriptInvocationContextExtensions.cs)
// from the Service Bus extension's binding data
// (azure-sdk-for-net, Microsoft.Azure.WebJobs.Extensions.ServiceBus,
// ServiceBusTriggerBindingStrategy.cs); see payload.go.
//
// It is test tooling, never shipped. It may import the azservicebus client
// and handler/testenv, and must not import any other jitaccess package: it
// speaks to the handler only over HTTP, as the host does, so nothing here
// may know the handler's internals. Its API takes no *testing.T: errors are
// returned and Close stops everything.
package hostsim
