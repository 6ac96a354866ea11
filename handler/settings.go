package main

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"jitaccess/handler/armsim"
	"jitaccess/handler/azurenet"
	"jitaccess/handler/jit"
)

// setting documents one environment variable (an app setting in Azure).
// This list is the single source of truth: the README's table,
// local.settings.sample.json and infra/main.bicep are checked against it.
type setting struct {
	Name    string
	Default string
	Mode    string // "local", "functions" or "both"
	Doc     string
}

var allSettings = []setting{
	{"JIT_LISTEN", "127.0.0.1:7071", "local", "listen address of `handler local`; a loopback address unless JIT_LISTEN_ANY is true"},
	{"JIT_LISTEN_ANY", "false", "local", "let `handler local` listen beyond the loopback (JIT_LISTEN): every caller of local mode is an administrator, so set it only where nobody else can reach the port"},
	{"JIT_DATA_DIR", ".jit-local", "local", "state directory of `handler local` (bbolt file, simulator estate)"},
	{"JIT_ARM_LATENCY", "0", "local", "ARM simulator: how long each ARM write's operation runs (e.g. 2s); when set, the simulator also behaves as ARM does under load: one operation at a time per NSG and the subscription's write, delete and read budgets"},
	{"JIT_ARM_JITTER", "0", "local", "ARM simulator with JIT_ARM_LATENCY: each write's time varies by up to this much either way (e.g. 500ms)"},
	{"JIT_ARM_WRITE_BUDGET", "200/10", "local", "ARM simulator with JIT_ARM_LATENCY: the subscription's write token bucket, SIZE/PER_SECOND as ARM documents it, or off"},
	{"JIT_ARM_DELETE_BUDGET", "200/10", "local", "ARM simulator with JIT_ARM_LATENCY: the subscription's delete token bucket, SIZE/PER_SECOND, or off"},
	{"JIT_ARM_READ_BUDGET", "250/25", "local", "ARM simulator with JIT_ARM_LATENCY: the subscription's read token bucket (operation polls included), SIZE/PER_SECOND, or off"},
	{"JIT_ARM_BUSY", "429", "local", "ARM simulator with JIT_ARM_LATENCY: the answer to a write on an NSG with an operation in progress: 429 (RetryableErrorDueToAnotherOperation) or 409 (AnotherOperationInProgress)"},
	{"JIT_ARM_ESTATE", "", "local", "ARM simulator: estate JSON loaded at first start (default: the embedded demo estate)"},
	{"JIT_PPROF", "false", "local", "serve Go's profiler at /debug/pprof/ (local mode only, for performance work)"},
	{"JIT_ARM_FAULT_RATE", "0", "local", "fault tests only: share of ARM writes the simulator answers with 429, 409 or 500"},
	{"JIT_CHAOS_DROP_CLOSES", "0", "local", "fault tests only: share of close operations lost on the way to the queue"},
	{"JIT_CHAOS_DUPLICATE", "0", "local", "fault tests only: share of close operations sent twice"},
	{"JIT_MIN_DURATION", "5m", "both", "shortest request and shortest port maximum (Go or ISO 8601 duration)"},
	{"JIT_ALLOW_PRIORITIES", "1000-1999", "both", "priority band of allow rules; must lie before the deny band"},
	{"JIT_DENY_PRIORITIES", "4000-4095", "both", "priority band of deny (lockdown) rules"},
	{"JIT_DEPLOYMENT", "", "both", "this deployment's name in the marker of every rule it writes ([jit:NAME] starts the description); a rule without it is never changed or deleted. Default: the Function App's name (WEBSITE_SITE_NAME), else jitaccess. Two deployments in one subscription need different names"},
	{"JIT_SWEEP_INTERVAL", "30s", "local", "how often `handler local` sweeps overdue grants closed"},
	{"JIT_SWEEP_SCHEDULE", "0 */1 * * * *", "functions", "NCRONTAB schedule of the sweeper function (read by the Functions host)"},
	{"JIT_SUBSCRIPTIONS", "11111111-1111-1111-1111-111111111111", "both", "subscriptions in scope, comma-separated (the demo subscription in local mode; required in Functions mode)"},
	{"JIT_LOG_LEVEL", "info", "both", "debug, info, warn or error"},
	{"JIT_PENDING_EXPIRY", "1h", "both", "how long a request waits for approval before it expires"},
	{"JIT_INVENTORY_TTL", "1m", "both", "how long the VM list read from Azure serves GET /api/v1/vms; resource events refresh it at once"},
	{"JIT_RECONCILE_SHARE", "0.25", "both", "share of the time the sweep may keep the process busy, 0.05 to 1: it counts the process's CPU time, not time spent waiting on Azure, and pauses (at most 1 s at a time) so that a large estate does not slow requests in the same process; the closes of ended grants are not paced. Functions mode does not pace unless it is set: the sweeper runs in its own invocation, within functionTimeout"},
	{"JIT_MAX_OPEN_REQUESTS", "20", "both", "most open (Active) plus pending requests one person may have, 1 to 10000, or off; counted in the store (each new request reads at most this many plus one of the person's live requests), so it holds across instances; more is answered 429 with Retry-After"},
	{"JIT_WRITES_PER_MINUTE", "60", "both", "changes (initiate, extend, revoke, approve, deny, policy writes) one principal may make a minute on one instance, or off; kept in each instance's memory, so N instances allow N times as many; more is answered 429 with Retry-After"},
	{"JIT_WRITE_BURST", "20", "both", "changes one principal may make at once before JIT_WRITES_PER_MINUTE paces them, 1 to 10000"},
	{"JIT_STUCK_AFTER", "5m", "both", "how long an open may stay undone before the sweeper marks the grant failed (and makes sure nothing is open)"},
	{"JIT_WEBHOOK_URL", "", "both", "incoming webhook (Teams, Slack) that hears about pending, approved, denied, opened, closed, revoked, failed and drift"},
	{"JIT_NOTIFY_RETRY", "30s", "both", "wait after a notification's first failed delivery, doubling up to 20 times it; the 8th failed try gives it up (audited)"},
	{"JIT_TRUSTED_PROXIES", "", "both", "CIDRs of proxies whose X-Forwarded-For gives the caller's address (Functions mode always trusts the local host)"},
	{"JIT_CLOUD", "AzurePublic", "functions", "AzurePublic, AzureUSGovernment or AzureChina"},
	{"JIT_ARM_ENDPOINT", "", "functions", "Resource Manager endpoint; default: the cloud's (tests point it at the simulator)"},
	{"JIT_TABLES_URL", "", "functions", "Table service URL (https://ACCOUNT.table.core.windows.net), used with the managed identity"},
	{"JIT_TABLES_CONNECTION", "", "functions", "Table Storage connection string instead of JIT_TABLES_URL (UseDevelopmentStorage=true for Azurite)"},
	{"JIT_TABLE_PREFIX", "jit", "functions", "prefix of the table names (policies, requests, audit)"},
	{"JIT_SERVICEBUS_QUEUE", "jit-operations", "functions", "queue of open/close operations, without sessions (also read by the Functions host)"},
	{"JIT_MAX_DELIVERIES", "10", "functions", "the queue's max delivery count, so the last failed delivery is logged as final"},
	{"ServiceBusConnection__fullyQualifiedNamespace", "", "functions", "Service Bus namespace (NS.servicebus.windows.net), used with the managed identity"},
	{"JIT_SERVICEBUS_ENDPOINT", "", "functions", "host:port to connect to instead of the namespace's own address (tests point it at the Service Bus double)"},
	{"ServiceBusConnection__credential", "", "functions", "managedidentity (read by the Functions host)"},
	{"ServiceBusConnection__clientId", "", "functions", "client id of the user-assigned identity (read by the Functions host)"},
	{"ServiceBusConnection", "", "functions", "Service Bus connection string instead of the namespace (tests, emulators)"},
	{"AZURE_CLIENT_ID", "", "functions", "client id of the user-assigned managed identity used for ARM, Tables and Service Bus"},
	{"FUNCTIONS_CUSTOMHANDLER_PORT", "", "functions", "set by the Functions host: the port the handler listens on"},
}

// settings are read once from the environment at start.
type settings struct {
	Listen        string
	ListenAny     bool // JIT_LISTEN_ANY: JIT_LISTEN may be beyond the loopback
	DataDir       string
	MinDuration   time.Duration
	AllowBand     [2]int
	DenyBand      [2]int
	Deployment    string
	SweepInterval time.Duration
	LogLevel      string
	ARMLatency    time.Duration
	ARMAzure      armsim.Azure // with ARMLatency: how the simulator behaves as ARM under load
	Estate        string
	Subscriptions []string
	// SubscriptionsSet: JIT_SUBSCRIPTIONS was given, not defaulted to the
	// demo estate's subscription.
	SubscriptionsSet bool

	Cloud             string
	ARMEndpoint       string
	TablesURL         string
	TablesConnection  string
	TablePrefix       string
	Queue             string
	MaxDeliveries     int64
	ServiceBusNS      string
	ServiceBusAddr    string // JIT_SERVICEBUS_ENDPOINT: where to connect, when not the namespace itself
	ServiceBusConnStr string
	ClientID          string
	Port              string
	// AuthEnabled: the platform says App Service Authentication is on
	// (WEBSITE_AUTH_ENABLED, see runFunctions); set by App Service, not by us.
	AuthEnabled bool

	PProf          bool
	ARMFaultRate   float64
	ChaosDrop      float64
	ChaosDuplicate float64
	PendingExpiry  time.Duration
	StuckAfter     time.Duration
	Limits         jit.Limits // JIT_MAX_OPEN_REQUESTS, JIT_WRITES_PER_MINUTE, JIT_WRITE_BURST
	NotifyRetry    time.Duration
	InventoryTTL   time.Duration
	ReconcileShare float64
	// ReconcileShareSet: JIT_RECONCILE_SHARE was set, not defaulted.
	ReconcileShareSet bool
	WebhookURL        string
	TrustedProxies    []netip.Prefix
}

func readSettings(getenv func(string) string) (settings, error) {
	get := func(name string) string {
		if v := getenv(name); v != "" {
			return v
		}
		for _, s := range allSettings {
			if s.Name == name {
				return s.Default
			}
		}
		panic("undocumented setting " + name)
	}
	s := settings{
		Listen:            get("JIT_LISTEN"),
		DataDir:           get("JIT_DATA_DIR"),
		LogLevel:          get("JIT_LOG_LEVEL"),
		Estate:            get("JIT_ARM_ESTATE"),
		Subscriptions:     splitList(get("JIT_SUBSCRIPTIONS")),
		SubscriptionsSet:  getenv("JIT_SUBSCRIPTIONS") != "",
		Cloud:             get("JIT_CLOUD"),
		ARMEndpoint:       get("JIT_ARM_ENDPOINT"),
		TablesURL:         get("JIT_TABLES_URL"),
		TablesConnection:  get("JIT_TABLES_CONNECTION"),
		TablePrefix:       get("JIT_TABLE_PREFIX"),
		Queue:             get("JIT_SERVICEBUS_QUEUE"),
		ServiceBusNS:      get("ServiceBusConnection__fullyQualifiedNamespace"),
		ServiceBusAddr:    get("JIT_SERVICEBUS_ENDPOINT"),
		ServiceBusConnStr: get("ServiceBusConnection"),
		ClientID:          get("AZURE_CLIENT_ID"),
		Port:              get("FUNCTIONS_CUSTOMHANDLER_PORT"),
		AuthEnabled:       strings.EqualFold(getenv("WEBSITE_AUTH_ENABLED"), "true"),
	}
	var err error
	if s.MinDuration, err = durationSetting("JIT_MIN_DURATION", get("JIT_MIN_DURATION")); err != nil {
		return s, err
	}
	if s.MinDuration < time.Second || s.MinDuration > jit.MaxDuration {
		return s, fmt.Errorf("JIT_MIN_DURATION must be between 1s and 24h")
	}
	if s.SweepInterval, err = durationSetting("JIT_SWEEP_INTERVAL", get("JIT_SWEEP_INTERVAL")); err != nil {
		return s, err
	}
	if s.SweepInterval < 100*time.Millisecond {
		return s, fmt.Errorf("JIT_SWEEP_INTERVAL must be at least 100ms")
	}
	if s.ARMLatency, err = durationSetting("JIT_ARM_LATENCY", get("JIT_ARM_LATENCY")); err != nil {
		return s, err
	}
	if s.ARMAzure, err = armAzureSettings(get, s.ARMLatency); err != nil {
		return s, err
	}
	if s.AllowBand, err = bandSetting("JIT_ALLOW_PRIORITIES", get("JIT_ALLOW_PRIORITIES")); err != nil {
		return s, err
	}
	if s.DenyBand, err = bandSetting("JIT_DENY_PRIORITIES", get("JIT_DENY_PRIORITIES")); err != nil {
		return s, err
	}
	if s.AllowBand[1] >= s.DenyBand[0] {
		return s, fmt.Errorf("JIT_ALLOW_PRIORITIES (%d-%d) must lie entirely before JIT_DENY_PRIORITIES (%d-%d): allow rules must win over deny rules",
			s.AllowBand[0], s.AllowBand[1], s.DenyBand[0], s.DenyBand[1])
	}
	if s.Deployment, err = deploymentSetting(get("JIT_DEPLOYMENT"), getenv("WEBSITE_SITE_NAME")); err != nil {
		return s, err
	}
	if len(s.Subscriptions) == 0 {
		return s, fmt.Errorf("JIT_SUBSCRIPTIONS names no subscription")
	}
	for _, sub := range s.Subscriptions {
		if _, err := jit.ParseVMID("/subscriptions/" + sub + "/resourceGroups/x/providers/Microsoft.Compute/virtualMachines/x"); err != nil {
			return s, fmt.Errorf("JIT_SUBSCRIPTIONS: %q is not a subscription id", sub)
		}
	}
	if s.PendingExpiry, err = durationSetting("JIT_PENDING_EXPIRY", get("JIT_PENDING_EXPIRY")); err != nil {
		return s, err
	}
	if s.PendingExpiry < time.Second || s.PendingExpiry > 7*24*time.Hour {
		return s, fmt.Errorf("JIT_PENDING_EXPIRY must be between 1s and 7 days")
	}
	switch get("JIT_LISTEN_ANY") {
	case "true", "1":
		s.ListenAny = true
	case "false", "0":
	default:
		return s, fmt.Errorf("JIT_LISTEN_ANY must be true or false")
	}
	switch get("JIT_PPROF") {
	case "true", "1":
		s.PProf = true
	case "false", "0":
	default:
		return s, fmt.Errorf("JIT_PPROF must be true or false")
	}
	for _, f := range []struct {
		name string
		dst  *float64
	}{{"JIT_ARM_FAULT_RATE", &s.ARMFaultRate}, {"JIT_CHAOS_DROP_CLOSES", &s.ChaosDrop}, {"JIT_CHAOS_DUPLICATE", &s.ChaosDuplicate}} {
		v, err := strconv.ParseFloat(get(f.name), 64)
		if err != nil || v < 0 || v > 0.9 {
			return s, fmt.Errorf("%s must be a fraction between 0 and 0.9", f.name)
		}
		*f.dst = v
	}
	s.ReconcileShareSet = getenv("JIT_RECONCILE_SHARE") != ""
	if s.ReconcileShare, err = strconv.ParseFloat(get("JIT_RECONCILE_SHARE"), 64); err != nil || s.ReconcileShare < 0.05 || s.ReconcileShare > 1 {
		return s, fmt.Errorf("JIT_RECONCILE_SHARE must be a fraction between 0.05 and 1")
	}
	if s.InventoryTTL, err = durationSetting("JIT_INVENTORY_TTL", get("JIT_INVENTORY_TTL")); err != nil {
		return s, err
	}
	if s.InventoryTTL < time.Second {
		return s, fmt.Errorf("JIT_INVENTORY_TTL must be at least 1s")
	}
	if s.StuckAfter, err = durationSetting("JIT_STUCK_AFTER", get("JIT_STUCK_AFTER")); err != nil {
		return s, err
	}
	if s.StuckAfter < time.Second {
		return s, fmt.Errorf("JIT_STUCK_AFTER must be at least 1s")
	}
	if s.Limits, err = limitSettings(get); err != nil {
		return s, err
	}
	if s.NotifyRetry, err = durationSetting("JIT_NOTIFY_RETRY", get("JIT_NOTIFY_RETRY")); err != nil {
		return s, err
	}
	if s.NotifyRetry < time.Second || s.NotifyRetry > time.Hour {
		return s, fmt.Errorf("JIT_NOTIFY_RETRY must be between 1s and 1h")
	}
	s.WebhookURL = get("JIT_WEBHOOK_URL")
	for _, c := range splitList(get("JIT_TRUSTED_PROXIES")) {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			a, aerr := netip.ParseAddr(c)
			if aerr != nil {
				return s, fmt.Errorf("JIT_TRUSTED_PROXIES: %q is not an IP address or CIDR", c)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		s.TrustedProxies = append(s.TrustedProxies, p.Masked())
	}
	if s.MaxDeliveries, err = strconv.ParseInt(get("JIT_MAX_DELIVERIES"), 10, 64); err != nil || s.MaxDeliveries < 1 {
		return s, fmt.Errorf("JIT_MAX_DELIVERIES must be a whole number of at least 1")
	}
	switch s.Cloud {
	case "AzurePublic", "AzureUSGovernment", "AzureChina":
	default:
		return s, fmt.Errorf("JIT_CLOUD %q is not one of AzurePublic, AzureUSGovernment, AzureChina", s.Cloud)
	}
	return s, nil
}

// armAzureSettings reads how the simulator behaves as ARM under load, which
// it does whenever JIT_ARM_LATENCY is set.
func armAzureSettings(get func(string) string, latency time.Duration) (armsim.Azure, error) {
	a := armsim.Azure{WriteTime: latency}
	var err error
	if a.Jitter, err = durationSetting("JIT_ARM_JITTER", get("JIT_ARM_JITTER")); err != nil {
		return a, err
	}
	if a.Jitter < 0 || (latency > 0 && a.Jitter > latency) {
		return a, fmt.Errorf("JIT_ARM_JITTER must be between 0 and JIT_ARM_LATENCY")
	}
	for _, b := range []struct {
		name string
		dst  *armsim.Bucket
		def  armsim.Bucket
	}{{"JIT_ARM_WRITE_BUDGET", &a.Writes, armsim.DefaultWriteBucket}, {"JIT_ARM_DELETE_BUDGET", &a.Deletes, armsim.DefaultDeleteBucket}, {"JIT_ARM_READ_BUDGET", &a.Reads, armsim.DefaultReadBucket}} {
		if *b.dst, err = armsim.ParseBucket(get(b.name), b.def); err != nil {
			return a, fmt.Errorf("%s: %w", b.name, err)
		}
	}
	switch get("JIT_ARM_BUSY") {
	case "429":
		a.Busy = armsim.BusyRetryable
	case "409":
		a.Busy = armsim.BusyConflict
	default:
		return a, fmt.Errorf("JIT_ARM_BUSY must be 429 or 409")
	}
	return a, nil
}

// networkConfig is the azurenet driver's configuration from the settings.
func (s settings) networkConfig(log zerolog.Logger) azurenet.Config {
	return azurenet.Config{
		Owner:         jit.Owner{Deployment: s.Deployment},
		Subscriptions: s.Subscriptions,
		AllowBand:     azurenet.Band{Min: s.AllowBand[0], Max: s.AllowBand[1]},
		DenyBand:      azurenet.Band{Min: s.DenyBand[0], Max: s.DenyBand[1]},
		Log:           log,
	}
}

// serviceConfig is the service's configuration from the settings. In
// Functions mode the sweep is not paced unless JIT_RECONCILE_SHARE is set:
// it runs in its own invocation, which pauses would only stretch towards
// functionTimeout.
func (s settings) serviceConfig(functions bool, n jit.Notifier, log zerolog.Logger) jit.Config {
	share := s.ReconcileShare
	if functions && !s.ReconcileShareSet {
		share = 0
	}
	return jit.Config{MinDuration: s.MinDuration, Subscriptions: s.Subscriptions, PendingExpiry: s.PendingExpiry,
		StuckAfter: s.StuckAfter, InventoryTTL: s.InventoryTTL, ReconcileShare: share, Notifier: n, NoticeBackoff: s.NotifyRetry, Log: log,
		Deployment: s.Deployment, Limits: s.Limits,
		AllowBand: jit.Band{Min: s.AllowBand[0], Max: s.AllowBand[1]},
		DenyBand:  jit.Band{Min: s.DenyBand[0], Max: s.DenyBand[1]}}
}

// limitSettings reads the per-principal limits.
func limitSettings(get func(string) string) (jit.Limits, error) {
	var l jit.Limits
	var err error
	if v := get("JIT_MAX_OPEN_REQUESTS"); v == "off" {
		l.MaxOpenRequests = -1
	} else if l.MaxOpenRequests, err = strconv.Atoi(v); err != nil || l.MaxOpenRequests < 1 || l.MaxOpenRequests > 10000 {
		return l, fmt.Errorf("JIT_MAX_OPEN_REQUESTS must be a whole number between 1 and 10000, or off")
	}
	if l.WriteBurst, err = strconv.Atoi(get("JIT_WRITE_BURST")); err != nil || l.WriteBurst < 1 || l.WriteBurst > 10000 {
		return l, fmt.Errorf("JIT_WRITE_BURST must be a whole number between 1 and 10000")
	}
	if v := get("JIT_WRITES_PER_MINUTE"); v == "off" {
		l.WritesPerMinute = -1
	} else if l.WritesPerMinute, err = strconv.ParseFloat(v, 64); err != nil || !(l.WritesPerMinute >= 0.1 && l.WritesPerMinute <= 1e6) {
		return l, fmt.Errorf("JIT_WRITES_PER_MINUTE must be a number of changes a minute between 0.1 and 1000000, or off")
	}
	return l, nil
}

// deploymentSetting is JIT_DEPLOYMENT, or else the Function App's name made
// into a deployment name (lower case, other characters as '-', at most 40
// characters), or else jit.DefaultDeployment.
func deploymentSetting(v, site string) (string, error) {
	if v != "" {
		if err := jit.ValidateDeployment(v); err != nil {
			return "", fmt.Errorf("JIT_DEPLOYMENT: %s", jit.ErrorMessage(err))
		}
		return v, nil
	}
	var b strings.Builder
	for _, c := range strings.ToLower(site) {
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' {
			b.WriteRune(c)
		} else if b.Len() > 0 {
			b.WriteByte('-')
		}
	}
	name := strings.TrimRight(b.String(), "-")
	if len(name) > 40 {
		name = strings.TrimRight(name[:40], "-")
	}
	if name == "" {
		return jit.DefaultDeployment, nil
	}
	return name, nil
}

// functionsStorage picks the Table Storage connection for Functions mode:
// JIT_TABLES_URL with the managed identity, else a connection string from
// JIT_TABLES_CONNECTION or, when it is one, AzureWebJobsStorage.
func (s settings) functionsStorage(getenv func(string) string) (url, conn string, err error) {
	if s.TablesURL != "" {
		return s.TablesURL, "", nil
	}
	if s.TablesConnection != "" {
		return "", s.TablesConnection, nil
	}
	if c := getenv("AzureWebJobsStorage"); strings.Contains(c, "AccountName=") || strings.Contains(c, "UseDevelopmentStorage=true") {
		return "", c, nil
	}
	return "", "", fmt.Errorf("no Table Storage configured: set JIT_TABLES_URL (managed identity) or JIT_TABLES_CONNECTION")
}

func splitList(v string) []string {
	var out []string
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, strings.ToLower(p))
		}
	}
	return out
}

// durationSetting accepts Go durations (90s, 5m) and ISO 8601 (PT5M).
func durationSetting(name, v string) (time.Duration, error) {
	if d, err := time.ParseDuration(v); err == nil {
		return d, nil
	}
	if d, err := jit.ParseDuration(v); err == nil {
		return d, nil
	}
	return 0, fmt.Errorf("%s: %q is not a duration such as 90s, 5m or PT5M", name, v)
}

// bandSetting reads a priority band "FROM-TO" within ARM's 100-4096.
func bandSetting(name, v string) ([2]int, error) {
	lo, hi, ok := strings.Cut(v, "-")
	a, err1 := strconv.Atoi(strings.TrimSpace(lo))
	b, err2 := strconv.Atoi(strings.TrimSpace(hi))
	if !ok || err1 != nil || err2 != nil || a < 100 || b > 4096 || a > b {
		return [2]int{}, fmt.Errorf("%s: %q is not a priority band such as 1000-1999 within 100-4096", name, v)
	}
	return [2]int{a, b}, nil
}
