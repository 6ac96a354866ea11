package main

import (
	"bufio"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"jitaccess/handler/jit"
)

// The settings registry (allSettings) is the single source of truth; these
// tests hold local.settings.sample.json, README.md's settings table and
// infra/main.bicep to it.

// hostOwnedSample are keys of local.settings.sample.json that the Functions
// host reads and the handler does not.
var hostOwnedSample = []string{"FUNCTIONS_WORKER_RUNTIME", "AzureWebJobsStorage"}

// hostOwnedBicep are app settings main.bicep sets for the Functions host or
// the platform, not read by the handler.
var hostOwnedBicep = []string{
	"AzureWebJobsStorage__accountName",
	"AzureWebJobsStorage__credential",
	"AzureWebJobsStorage__clientId",
	"APPLICATIONINSIGHTS_CONNECTION_STRING",
	"APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
	"FUNCTIONS_EXTENSION_VERSION",
	"FUNCTIONS_WORKER_RUNTIME",
}

// notSetInAzure are functions-mode settings main.bicep leaves unset on purpose.
var notSetInAzure = map[string]string{
	"JIT_ARM_ENDPOINT":             "tests point it at the ARM simulator; in Azure the cloud's endpoint is right",
	"JIT_SERVICEBUS_ENDPOINT":      "tests point it at the Service Bus double; in Azure the namespace's own address is right",
	"JIT_TABLES_CONNECTION":        "a connection string; Azure uses JIT_TABLES_URL with the managed identity",
	"ServiceBusConnection":         "a connection string; Azure uses ServiceBusConnection__fullyQualifiedNamespace",
	"FUNCTIONS_CUSTOMHANDLER_PORT": "set by the Functions host",
}

func functionsSettings() []setting {
	var out []setting
	for _, s := range allSettings {
		if s.Mode == "functions" || s.Mode == "both" {
			out = append(out, s)
		}
	}
	return out
}

func TestSettingsRegistryIsWellFormed(t *testing.T) {
	seen := map[string]bool{}
	for _, s := range allSettings {
		if seen[s.Name] {
			t.Errorf("%s is listed twice", s.Name)
		}
		seen[s.Name] = true
		if s.Mode != "local" && s.Mode != "functions" && s.Mode != "both" {
			t.Errorf("%s: mode %q is not local, functions or both", s.Name, s.Mode)
		}
		if strings.TrimSpace(s.Doc) == "" {
			t.Errorf("%s has no documentation", s.Name)
		}
	}
	if _, err := readSettings(func(string) string { return "" }); err != nil {
		t.Errorf("the defaults do not pass readSettings: %v", err)
	}
}

func TestSampleSettingsCoverRegistry(t *testing.T) {
	var sample struct {
		Comment     string            `json:"_comment"`
		IsEncrypted *bool             `json:"IsEncrypted"`
		Values      map[string]string `json:"Values"`
	}
	readJSON(t, filepath.Join("..", "local.settings.sample.json"), &sample)
	if sample.IsEncrypted == nil || *sample.IsEncrypted {
		t.Error(`local.settings.sample.json needs "IsEncrypted": false`)
	}
	if !strings.Contains(sample.Comment, "README") {
		t.Error("local.settings.sample.json's _comment should point to the README's settings table")
	}
	for _, s := range functionsSettings() {
		if _, ok := sample.Values[s.Name]; !ok {
			t.Errorf("local.settings.sample.json lacks %s (%s)", s.Name, s.Doc)
		}
	}
	for name := range sample.Values {
		s := settingByName(name)
		switch {
		case slices.Contains(hostOwnedSample, name):
		case s == nil:
			t.Errorf("local.settings.sample.json has %s, which handler/settings.go does not document", name)
		case s.Mode == "local":
			t.Errorf("local.settings.sample.json has %s, a local-mode setting", name)
		}
	}
	if got := sample.Values["FUNCTIONS_WORKER_RUNTIME"]; got != "custom" {
		t.Errorf("FUNCTIONS_WORKER_RUNTIME = %q, want custom", got)
	}
	// The sample's values must be ones the handler accepts.
	if _, err := readSettings(func(k string) string { return sample.Values[k] }); err != nil {
		t.Errorf("local.settings.sample.json's values fail readSettings: %v", err)
	}
}

// settingsTable returns the rows (name -> default cell) of the table under
// "## Settings" in a Markdown file.
func settingsTable(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows := map[string]string{}
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "## ") {
			in = strings.TrimSpace(line) == "## Settings"
			continue
		}
		if !in || !strings.HasPrefix(line, "| `") {
			continue
		}
		cells := strings.Split(line, "|")
		if len(cells) < 4 {
			continue
		}
		name := strings.Trim(strings.TrimSpace(cells[1]), "`")
		rows[name] = strings.TrimSpace(cells[2])
	}
	if len(rows) == 0 {
		t.Fatalf("%s has no settings table under \"## Settings\"", path)
	}
	return rows
}

// settingsMarkdown is the table the registry implies, logged when a
// document's table is out of date so it can be pasted in.
func settingsMarkdown() string {
	var b strings.Builder
	b.WriteString("| setting | default | mode | what |\n|---|---|---|---|\n")
	for _, s := range allSettings {
		def := "—"
		if s.Default != "" {
			def = "`" + s.Default + "`"
		}
		b.WriteString("| `" + s.Name + "` | " + def + " | " + s.Mode + " | " + s.Doc + " |\n")
	}
	return b.String()
}

func checkSettingsTable(t *testing.T, path string) {
	defer func() {
		if t.Failed() {
			t.Logf("the registry's table:\n%s", settingsMarkdown())
		}
	}()
	rows := settingsTable(t, path)
	for _, s := range allSettings {
		def, ok := rows[s.Name]
		if !ok {
			t.Errorf("%s: the settings table lacks %s", path, s.Name)
			continue
		}
		if s.Default != "" && !strings.Contains(def, "`"+s.Default+"`") {
			t.Errorf("%s: %s's default cell %q does not show `%s`", path, s.Name, def, s.Default)
		}
	}
	for name := range rows {
		if settingByName(name) == nil && !slices.Contains(hostOwnedSample, name) && !slices.Contains(hostOwnedBicep, name) {
			t.Errorf("%s: the settings table has %s, which handler/settings.go does not document", path, name)
		}
	}
}

// TestDeployDocSettingsTable checks the full table in docs/deploy.md.
func TestDeployDocSettingsTable(t *testing.T) {
	checkSettingsTable(t, filepath.Join("..", "docs", "deploy.md"))
}

// TestREADMESettingsTable checks the table users read.
func TestREADMESettingsTable(t *testing.T) {
	checkSettingsTable(t, filepath.Join("..", "README.md"))
}

func TestReadSettingsRejectsBadValues(t *testing.T) {
	cases := []struct {
		name string
		env  map[string]string
		want string // part of the error message
	}{
		{"duration not a duration", map[string]string{"JIT_MIN_DURATION": "five minutes"}, `JIT_MIN_DURATION: "five minutes" is not a duration`},
		{"duration below 1s", map[string]string{"JIT_MIN_DURATION": "500ms"}, "JIT_MIN_DURATION must be between 1s and 24h"},
		{"duration above 24h", map[string]string{"JIT_MIN_DURATION": "P2D"}, "JIT_MIN_DURATION"},
		{"sweep interval not a duration", map[string]string{"JIT_SWEEP_INTERVAL": "often"}, `JIT_SWEEP_INTERVAL: "often" is not a duration`},
		{"ARM latency not a duration", map[string]string{"JIT_ARM_LATENCY": "-"}, "JIT_ARM_LATENCY"},
		{"ARM jitter above the latency", map[string]string{"JIT_ARM_LATENCY": "2s", "JIT_ARM_JITTER": "3s"}, "JIT_ARM_JITTER must be between 0 and JIT_ARM_LATENCY"},
		{"write budget without a rate", map[string]string{"JIT_ARM_WRITE_BUDGET": "200"}, `JIT_ARM_WRITE_BUDGET: "200" is not a token bucket`},
		{"delete budget of zero", map[string]string{"JIT_ARM_DELETE_BUDGET": "0/10"}, "JIT_ARM_DELETE_BUDGET"},
		{"read budget not numbers", map[string]string{"JIT_ARM_READ_BUDGET": "many/fast"}, "JIT_ARM_READ_BUDGET"},
		{"busy answer not 429 or 409", map[string]string{"JIT_ARM_BUSY": "503"}, "JIT_ARM_BUSY must be 429 or 409"},
		{"band not a band", map[string]string{"JIT_ALLOW_PRIORITIES": "1000"}, `JIT_ALLOW_PRIORITIES: "1000" is not a priority band`},
		{"band below 100", map[string]string{"JIT_ALLOW_PRIORITIES": "50-900"}, "JIT_ALLOW_PRIORITIES"},
		{"band above 4096", map[string]string{"JIT_DENY_PRIORITIES": "4000-5000"}, "JIT_DENY_PRIORITIES"},
		{"band reversed", map[string]string{"JIT_DENY_PRIORITIES": "4095-4000"}, "JIT_DENY_PRIORITIES"},
		{"bands overlap", map[string]string{"JIT_ALLOW_PRIORITIES": "1000-4050"}, "must lie entirely before JIT_DENY_PRIORITIES"},
		{"allow band after deny band", map[string]string{"JIT_ALLOW_PRIORITIES": "4000-4095", "JIT_DENY_PRIORITIES": "1000-1999"}, "must lie entirely before"},
		{"reconcile share not a number", map[string]string{"JIT_RECONCILE_SHARE": "a quarter"}, "JIT_RECONCILE_SHARE must be a fraction between 0.05 and 1"},
		{"reconcile share too small", map[string]string{"JIT_RECONCILE_SHARE": "0.01"}, "JIT_RECONCILE_SHARE must be a fraction between 0.05 and 1"},
		{"reconcile share above 1", map[string]string{"JIT_RECONCILE_SHARE": "1.5"}, "JIT_RECONCILE_SHARE"},
		{"bad cloud", map[string]string{"JIT_CLOUD": "AzureGermany"}, `JIT_CLOUD "AzureGermany" is not one of`},
		{"subscription not a GUID", map[string]string{"JIT_SUBSCRIPTIONS": "production"}, `JIT_SUBSCRIPTIONS: "production" is not a subscription id`},
		{"one bad subscription in a list", map[string]string{"JIT_SUBSCRIPTIONS": "11111111-1111-1111-1111-111111111111, x/y"}, "is not a subscription id"},
		{"no subscription", map[string]string{"JIT_SUBSCRIPTIONS": " , "}, "JIT_SUBSCRIPTIONS names no subscription"},
		{"max open requests 0", map[string]string{"JIT_MAX_OPEN_REQUESTS": "0"}, "JIT_MAX_OPEN_REQUESTS must be a whole number between 1 and 10000"},
		{"max open requests not a number", map[string]string{"JIT_MAX_OPEN_REQUESTS": "many"}, "JIT_MAX_OPEN_REQUESTS"},
		{"writes per minute not a number", map[string]string{"JIT_WRITES_PER_MINUTE": "fast"}, "JIT_WRITES_PER_MINUTE must be a number of changes a minute between 0.1 and 1000000, or off"},
		{"writes per minute 0", map[string]string{"JIT_WRITES_PER_MINUTE": "0"}, "JIT_WRITES_PER_MINUTE"},
		{"write burst 0", map[string]string{"JIT_WRITE_BURST": "0"}, "JIT_WRITE_BURST must be a whole number between 1 and 10000"},
		{"max deliveries 0", map[string]string{"JIT_MAX_DELIVERIES": "0"}, "JIT_MAX_DELIVERIES must be a whole number of at least 1"},
		{"max deliveries not a number", map[string]string{"JIT_MAX_DELIVERIES": "ten"}, "JIT_MAX_DELIVERIES"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := readSettings(func(k string) string { return c.env[k] })
			if err == nil {
				t.Fatalf("readSettings(%v) accepted it", c.env)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("readSettings(%v) = %q, want a message containing %q", c.env, err, c.want)
			}
		})
	}
}

// --- infra/main.bicep -----------------------------------------------------------

var bicepAppSettingRE = regexp.MustCompile(`^\s*\{ name: '([A-Za-z0-9_]+)', value: (.*) \}\s*$`)

func readBicep(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "infra", "main.bicep"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// bicepAppSettings returns name -> value expression of every app setting
// (written one per line as `{ name: 'X', value: ... }`).
func bicepAppSettings(t *testing.T, src string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, line := range strings.Split(src, "\n") {
		if m := bicepAppSettingRE.FindStringSubmatch(line); m != nil {
			if _, dup := out[m[1]]; dup {
				t.Errorf("main.bicep sets %s twice", m[1])
			}
			out[m[1]] = m[2]
		}
	}
	if len(out) == 0 {
		t.Fatal("found no app settings in infra/main.bicep")
	}
	return out
}

func TestBicepSetsEverySetting(t *testing.T) {
	set := bicepAppSettings(t, readBicep(t))
	for _, s := range functionsSettings() {
		_, ok := set[s.Name]
		_, skip := notSetInAzure[s.Name]
		switch {
		case !ok && !skip:
			t.Errorf("infra/main.bicep does not set %s (%s)", s.Name, s.Doc)
		case ok && skip:
			t.Errorf("infra/main.bicep sets %s, which stays unset in Azure: %s", s.Name, notSetInAzure[s.Name])
		}
	}
	for name := range set {
		s := settingByName(name)
		switch {
		case slices.Contains(hostOwnedBicep, name):
		case s == nil:
			t.Errorf("infra/main.bicep sets %s, which handler/settings.go does not document (nor is it listed as host-owned)", name)
		case s.Mode == "local":
			t.Errorf("infra/main.bicep sets %s, a local-mode setting", name)
		}
	}
}

func TestBicepHasNoSecrets(t *testing.T) {
	src := readBicep(t)
	for _, bad := range []string{"listKeys(", "listkeys(", "AccountKey", "SharedAccessKey", "listConnectionStrings("} {
		if strings.Contains(src, bad) {
			t.Errorf("infra/main.bicep contains %q: use the managed identity, not keys", bad)
		}
	}
	for name, value := range bicepAppSettings(t, src) {
		if name == "APPLICATIONINSIGHTS_CONNECTION_STRING" {
			// Not a secret (an ingestion endpoint and id); ingestion needs Entra ID
			// because the component has DisableLocalAuth.
			continue
		}
		for _, bad := range []string{"ConnectionString", "connectionString", "Password", "Secret", "Key="} {
			if strings.Contains(value, bad) {
				t.Errorf("app setting %s = %s looks like a secret (%q)", name, value, bad)
			}
		}
	}
	if !strings.Contains(src, "DisableLocalAuth: true") || !strings.Contains(src, "disableLocalAuth: true") {
		t.Error("Application Insights and Service Bus must disable local (key) auth")
	}
	if !strings.Contains(src, "allowSharedKeyAccess: !isFlex") {
		t.Error("the storage account must refuse shared keys on Flex Consumption")
	}
}

// documentedRoles are the built-in role ids, from Microsoft's "Azure built-in
// roles" pages (Storage, Integration, Monitor).
var documentedRoles = map[string]string{
	"storageBlobDataOwner":        "b7e6dc6d-f1e8-4753-8033-0f276bb0955b", // Storage Blob Data Owner
	"storageTableDataContributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3", // Storage Table Data Contributor
	"serviceBusDataSender":        "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39", // Azure Service Bus Data Sender
	"serviceBusDataReceiver":      "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0", // Azure Service Bus Data Receiver
	"monitoringMetricsPublisher":  "3913510d-42f4-4e42-8a64-420c390055eb", // Monitoring Metrics Publisher
}

// bicepBlock returns the lines between `start` and the next line that is
// exactly `end`.
func bicepBlock(t *testing.T, src, start, end string) []string {
	t.Helper()
	i := strings.Index(src, start)
	if i < 0 {
		t.Fatalf("infra/main.bicep has no %q", start)
	}
	var out []string
	for _, line := range strings.Split(src[i+len(start):], "\n")[1:] {
		if line == end {
			return out
		}
		out = append(out, line)
	}
	t.Fatalf("infra/main.bicep: %q is not closed by %q", start, end)
	return nil
}

func TestBicepBuiltInRoleIDs(t *testing.T) {
	src := readBicep(t)
	re := regexp.MustCompile(`^\s*(\w+): '([0-9a-f-]{36})'`)
	got := map[string]string{}
	for _, line := range bicepBlock(t, src, "var builtInRoles = {", "}") {
		if m := re.FindStringSubmatch(line); m != nil {
			got[m[1]] = m[2]
		}
	}
	if !maps.Equal(got, documentedRoles) {
		t.Errorf("main.bicep builtInRoles = %v, want the documented ids %v", got, documentedRoles)
	}
	for key := range documentedRoles {
		if !strings.Contains(src, "builtInRoles."+key+")") {
			t.Errorf("main.bicep never assigns builtInRoles.%s", key)
		}
	}
	readme, err := os.ReadFile(filepath.Join("..", "infra", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range documentedRoles {
		if !strings.Contains(string(readme), id) {
			t.Errorf("infra/README.md does not document role %s", id)
		}
	}
}

func TestCustomRoleActionsMatchREADME(t *testing.T) {
	var bicep []string
	for _, line := range bicepBlock(t, readBicep(t), "var jitOperatorActions = [", "]") {
		if a := strings.Trim(strings.TrimSpace(line), "'"); a != "" {
			bicep = append(bicep, a)
		}
	}
	readme, err := os.ReadFile(filepath.Join("..", "infra", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	const fence = "```jit-operator-actions\n"
	i := strings.Index(string(readme), fence)
	if i < 0 {
		t.Fatal("infra/README.md has no ```jit-operator-actions block")
	}
	body, _, ok := strings.Cut(string(readme)[i+len(fence):], "```")
	if !ok {
		t.Fatal("infra/README.md: the jit-operator-actions block is not closed")
	}
	doc := strings.Fields(body)
	if !slices.Equal(bicep, doc) {
		t.Errorf("custom role actions differ:\n main.bicep      %v\n infra/README.md %v", bicep, doc)
	}
	for _, a := range bicep {
		if strings.Contains(a, "*") {
			t.Errorf("custom role action %s has a wildcard", a)
		}
	}
}

func TestQueueMatchesHostAndSettings(t *testing.T) {
	src := readBicep(t)
	quoted := regexp.MustCompile(`(?m)^var queueName = '([^']+)'$`).FindStringSubmatch(src)
	if quoted == nil || quoted[1] != settingByName("JIT_SERVICEBUS_QUEUE").Default {
		t.Errorf("main.bicep queueName %v, want JIT_SERVICEBUS_QUEUE's default %q", quoted, settingByName("JIT_SERVICEBUS_QUEUE").Default)
	}
	m := regexp.MustCompile(`(?m)^var maxDeliveries = (\d+)$`).FindStringSubmatch(src)
	if m == nil || m[1] != settingByName("JIT_MAX_DELIVERIES").Default {
		t.Errorf("main.bicep maxDeliveries %v, want JIT_MAX_DELIVERIES's default %q", m, settingByName("JIT_MAX_DELIVERIES").Default)
	}
	for _, want := range []string{
		"requiresSession: false",
		"maxDeliveryCount: maxDeliveries",
		"deadLetteringOnMessageExpiration: true",
		"requiresDuplicateDetection: true",
		"{ name: 'JIT_MAX_DELIVERIES', value: string(maxDeliveries) }",
		"{ name: 'JIT_SERVICEBUS_QUEUE', value: queue.name }",
	} {
		if !strings.Contains(src, want) {
			t.Errorf("main.bicep lacks %q", want)
		}
	}
	// The lock must outlast the host's automatic lock renewal step and a
	// function run: lockDuration at least host.json's functionTimeout.
	var host struct {
		FunctionTimeout string `json:"functionTimeout"`
	}
	readJSON(t, filepath.Join("..", "host.json"), &host)
	lock := regexp.MustCompile(`lockDuration: 'PT(\d+)M'`).FindStringSubmatch(src)
	if lock == nil {
		t.Fatal("main.bicep has no lockDuration in minutes")
	}
	lockMin, _ := strconv.Atoi(lock[1])
	parts := strings.Split(host.FunctionTimeout, ":")
	if len(parts) != 3 {
		t.Fatalf("host.json functionTimeout %q", host.FunctionTimeout)
	}
	h, _ := strconv.Atoi(parts[0])
	mi, _ := strconv.Atoi(parts[1])
	if lockMin > 5 || lockMin < h*60+mi {
		t.Errorf("lockDuration PT%dM: want at least functionTimeout %s and at most Service Bus's 5 minutes", lockMin, host.FunctionTimeout)
	}
	var worker functionJSON
	readJSON(t, filepath.Join("..", "functions", "worker", "function.json"), &worker)
	if len(worker.Bindings) != 1 || worker.Bindings[0].str("queueName") != "%JIT_SERVICEBUS_QUEUE%" {
		t.Errorf("functions/worker reads queue %v, want %%JIT_SERVICEBUS_QUEUE%%", worker.Bindings)
	}
}

// TestSettingNamesWorkOnLinux: Linux app settings allow only letters, digits
// and underscores in names (a "__" separates a connection's parts).
func TestSettingNamesWorkOnLinux(t *testing.T) {
	re := regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]*$`)
	for _, s := range allSettings {
		if !re.MatchString(s.Name) {
			t.Errorf("setting name %q: use letters, digits and underscores", s.Name)
		}
	}
}

func TestFunctionsModeNeedsSubscriptions(t *testing.T) {
	cfg, err := readSettings(func(k string) string {
		return map[string]string{"FUNCTIONS_CUSTOMHANDLER_PORT": "1"}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := runFunctions(zerolog.Nop(), cfg); err == nil || !strings.Contains(err.Error(), "JIT_SUBSCRIPTIONS is not set") {
		t.Fatalf("Functions mode without JIT_SUBSCRIPTIONS: %v, want a refusal naming it", err)
	}
}

// Functions mode trusts X-MS-CLIENT-PRINCIPAL, which only App Service
// Authentication makes trustworthy: without the platform's word that it is
// on, the handler must not serve. With it, start-up goes on (here to the
// next missing setting: no Table Storage).
func TestFunctionsModeNeedsAppServiceAuthentication(t *testing.T) {
	for _, tc := range []struct {
		auth    string
		refused bool
	}{
		{"", true},
		{"False", true},
		{"yes", true},
		{"True", false},
		{"true", false},
	} {
		cfg, err := readSettings(func(k string) string {
			return map[string]string{"FUNCTIONS_CUSTOMHANDLER_PORT": "1", "JIT_SUBSCRIPTIONS": "11111111-1111-1111-1111-111111111111",
				"WEBSITE_AUTH_ENABLED": tc.auth}[k]
		})
		if err != nil {
			t.Fatal(err)
		}
		err = runFunctions(zerolog.Nop(), cfg)
		if err == nil {
			t.Fatalf("WEBSITE_AUTH_ENABLED=%q: Functions mode started without Table Storage", tc.auth)
		}
		refused := strings.Contains(err.Error(), "WEBSITE_AUTH_ENABLED")
		if refused != tc.refused {
			t.Errorf("WEBSITE_AUTH_ENABLED=%q: runFunctions said %q; refused = %v, want %v", tc.auth, err, refused, tc.refused)
		}
		if refused && !strings.Contains(err.Error(), "Authentication") {
			t.Errorf("the refusal %q should say to turn on App Service Authentication", err)
		}
	}
}

// infra/app-roles.json, which make app-registration gives the API's app
// registration, holds exactly the roles the handler checks, each with its
// own fixed id.
func TestAppRolesMatchHandler(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "infra", "app-roles.json"))
	if err != nil {
		t.Fatal(err)
	}
	var roles []struct {
		AllowedMemberTypes []string `json:"allowedMemberTypes"`
		Description        string   `json:"description"`
		DisplayName        string   `json:"displayName"`
		ID                 string   `json:"id"`
		IsEnabled          bool     `json:"isEnabled"`
		Value              string   `json:"value"`
	}
	if err := json.Unmarshal(b, &roles); err != nil {
		t.Fatalf("infra/app-roles.json: %v", err)
	}
	guid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	var values []string
	ids := map[string]bool{}
	for _, r := range roles {
		values = append(values, r.Value)
		if !guid.MatchString(r.ID) || ids[r.ID] {
			t.Errorf("role %s: id %q is not a fresh GUID", r.Value, r.ID)
		}
		ids[r.ID] = true
		if !r.IsEnabled || r.Description == "" || r.DisplayName == "" || len(r.AllowedMemberTypes) == 0 {
			t.Errorf("role %s is incomplete: %+v", r.Value, r)
		}
		for _, m := range r.AllowedMemberTypes {
			if m != "User" && m != "Application" {
				t.Errorf("role %s: member type %q", r.Value, m)
			}
		}
	}
	want := []string{jit.RoleAdmin, jit.RoleApprover, jit.RoleRequester, jit.RoleReader, jit.RoleDelegate}
	slices.Sort(values)
	slices.Sort(want)
	if !slices.Equal(values, want) {
		t.Errorf("infra/app-roles.json has roles %v, the handler checks %v", values, want)
	}
}

// TestWorkerConcurrency: without simulated ARM latency the local worker
// writes no more NSGs at once than there are cores (at least 2), with it 8.
func TestWorkerConcurrency(t *testing.T) {
	prev := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(prev)
	for _, tc := range []struct {
		procs   int
		latency time.Duration
		want    int
	}{
		{1, 0, 2},
		{2, 0, 2},
		{6, 0, 6},
		{2, 2 * time.Second, 32},
		{16, time.Millisecond, 32},
	} {
		runtime.GOMAXPROCS(tc.procs)
		if got := workerConcurrency(tc.latency); got != tc.want {
			t.Errorf("GOMAXPROCS %d, latency %v: %d, want %d", tc.procs, tc.latency, got, tc.want)
		}
	}
}

// The sweep paces itself in local mode by default, where it shares the
// process with the API; in Functions mode only when the setting is given.
func TestReconcileShareByMode(t *testing.T) {
	for _, tc := range []struct {
		env       map[string]string
		functions bool
		want      float64
	}{
		{nil, false, 0.25},
		{nil, true, 0},
		{map[string]string{"JIT_RECONCILE_SHARE": "0.5"}, true, 0.5},
		{map[string]string{"JIT_RECONCILE_SHARE": "0.5"}, false, 0.5},
	} {
		s, err := readSettings(func(k string) string { return tc.env[k] })
		if err != nil {
			t.Fatal(err)
		}
		if got := s.serviceConfig(tc.functions, nil, zerolog.Nop()).ReconcileShare; got != tc.want {
			t.Errorf("%v, functions %v: ReconcileShare %v, want %v", tc.env, tc.functions, got, tc.want)
		}
	}
}
