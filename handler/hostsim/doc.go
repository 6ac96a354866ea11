// Package hostsim plays the Azure Functions host for the jitaccess custom
// handler, so that tests, the fault test and the benchmark program can run
// the built `handler` binary in Functions mode as Azure would, without the
// host itself (Azure Functions Core Tools cannot be installed here).
//
// Start launches one or more handler processes (scale-out instances), each
// on its own FUNCTIONS_CUSTOMHANDLER_PORT with the app settings given, and
// waits as the host does (GET / until any HTTP answer). It then forwards
// HTTP from one front URL to the instances in turn, receives the Service
// Bus queue as the Service Bus extension does on each instance, and invokes
// the worker function in the host's payload shape. With "cardinality":
// "many" an instance has one batch loop, invoking one batch at a time: up
// to maxMessageBatchSize messages of a queue without sessions, whatever
// they hold, or of one session at a time with sessions
// ("isSessionsEnabled"). One message per invocation goes out
// maxConcurrentCalls at once (maxConcurrentSessions sessions with
// sessions). It completes on 2xx and abandons (the whole batch) otherwise.
// FireTimer and SendEvent invoke the timer and Event Grid functions.
// Counters per instance say what the host did (invocations and failures by
// function, messages delivered, receives, completes, abandons).
// Instance.Kill takes one instance away mid-work, as a dying host instance
// goes, and Host.Restart starts it again, as the platform replaces it.
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
