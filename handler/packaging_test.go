package main

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// The staged app is what `func azure functionapp publish` zips: these tests
// run `make package` into a temporary DIST and check it as the Functions host
// would read it. The schemas are SchemaStore's, copied to testdata/schemas.

const (
	hostSchemaURL     = "https://json.schemastore.org/host.json"
	functionSchemaURL = "https://json.schemastore.org/function.json"
)

var (
	functionNameRE  = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,127}$`)
	bindingNameRE   = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9]*$`)
	appSettingRefRE = regexp.MustCompile(`%([^%]+)%`)
)

type hostJSON struct {
	Version       string `json:"version"`
	CustomHandler struct {
		Description struct {
			DefaultExecutablePath string   `json:"defaultExecutablePath"`
			WorkingDirectory      string   `json:"workingDirectory"`
			Arguments             []string `json:"arguments"`
		} `json:"description"`
		EnableForwardingHTTPRequest bool `json:"enableForwardingHttpRequest"`
	} `json:"customHandler"`
	ExtensionBundle struct {
		ID      string `json:"id"`
		Version string `json:"version"`
	} `json:"extensionBundle"`
}

type binding map[string]any

func (b binding) str(key string) string { s, _ := b[key].(string); return s }

type functionJSON struct {
	Bindings []binding `json:"bindings"`
}

// stageApp runs `make package` into a temporary DIST and returns dist/app.
func stageApp(t *testing.T) string {
	t.Helper()
	dist := t.TempDir()
	cmd := exec.Command("make", "-s", "package", "DIST="+dist)
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make package: %v\n%s", err, out)
	}
	return filepath.Join(dist, "app")
}

// TestPackagedApp stages the app once and checks it as the host would read it.
func TestPackagedApp(t *testing.T) {
	app := stageApp(t)
	for _, c := range []struct {
		name  string
		check func(*testing.T, string)
	}{
		{"Layout", checkPackageLayout},
		{"HandlerBinary", checkHandlerBinary},
		{"SchemaStore", checkSchemaStore},
		{"Names", checkNames},
		{"HTTPForwarding", checkHTTPForwarding},
		{"ServiceBusTrigger", checkServiceBusTrigger},
		{"SettingReferences", checkSettingReferences},
	} {
		t.Run(c.name, func(t *testing.T) { c.check(t, app) })
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// compileSchema loads a schema from testdata. asDraft6 overrides its declared
// draft: SchemaStore's function.json says draft-04 but uses `const` (draft-06)
// in its sql and mysql bindings; draft-04 ignores `const`, so those branches
// would match every binding and every "oneOf" would fail.
func compileSchema(t *testing.T, url, file string, asDraft6 bool) *jsonschema.Schema {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "schemas", file))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		t.Fatalf("schema %s: %v", file, err)
	}
	if asDraft6 {
		doc.(map[string]any)["$schema"] = "http://json-schema.org/draft-06/schema#"
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft4)
	if err := c.AddResource(url, doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile(url)
	if err != nil {
		t.Fatalf("compiling %s: %v", file, err)
	}
	return s
}

func validateFile(s *jsonschema.Schema, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return validateBytes(s, b)
}

func validateBytes(s *jsonschema.Schema, b []byte) error {
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		return err
	}
	return s.Validate(inst)
}

// functionDirs lists the function folders of the repository.
func functionDirs(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join("..", "functions"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		t.Fatal("no function folders under functions/")
	}
	return names
}

func checkPackageLayout(t *testing.T, app string) {
	want := append([]string{".funcignore", "handler", "host.json", "local.settings.json"}, functionDirs(t)...)
	slices.Sort(want)
	entries, err := os.ReadDir(app)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, want) {
		t.Errorf("dist/app holds %v, want %v (function folders must sit beside host.json)", got, want)
	}
	for _, fn := range functionDirs(t) {
		if _, err := os.Stat(filepath.Join(app, fn, "function.json")); err != nil {
			t.Errorf("function %s: %v", fn, err)
		}
	}

	ignore, err := os.ReadFile(filepath.Join(app, ".funcignore"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(strings.Fields(string(ignore)), "local.settings.json") {
		t.Error(".funcignore must keep local.settings.json out of the published zip")
	}
	var local struct{ Values map[string]string }
	readJSON(t, filepath.Join(app, "local.settings.json"), &local)
	if local.Values["FUNCTIONS_WORKER_RUNTIME"] != "custom" {
		t.Errorf("staged local.settings.json tells Core Tools the runtime %q, want custom", local.Values["FUNCTIONS_WORKER_RUNTIME"])
	}
}

func checkHandlerBinary(t *testing.T, app string) {
	var host hostJSON
	readJSON(t, filepath.Join(app, "host.json"), &host)
	exe := host.CustomHandler.Description.DefaultExecutablePath
	if exe != "handler" {
		t.Errorf("customHandler.description.defaultExecutablePath = %q, want %q (the binary make package builds)", exe, "handler")
	}
	path := filepath.Join(app, exe)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("the handler binary named by host.json is missing: %v", err)
	}
	if fi.Mode().Perm()&0o111 != 0o111 {
		t.Errorf("%s mode %v is not executable", path, fi.Mode())
	}
	f, err := elf.Open(path)
	if err != nil {
		t.Fatalf("%s is not an ELF file: %v", path, err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		t.Errorf("%s is %v %v, want ELFCLASS64 EM_X86_64 (linux/amd64)", path, f.Class, f.Machine)
	}
	if f.Type != elf.ET_EXEC {
		t.Errorf("%s is ELF type %v, want a static executable (CGO_ENABLED=0)", path, f.Type)
	}
	if _, err := f.DynamicSymbols(); err == nil {
		t.Errorf("%s is dynamically linked; build with CGO_ENABLED=0", path)
	}
}

func checkSchemaStore(t *testing.T, app string) {
	hostSchema := compileSchema(t, hostSchemaURL, "host.json", false)
	fnSchema := compileSchema(t, functionSchemaURL, "function.json", true)

	if err := validateFile(hostSchema, filepath.Join(app, "host.json")); err != nil {
		t.Errorf("host.json: %v", err)
	}
	for _, fn := range functionDirs(t) {
		if err := validateFile(fnSchema, filepath.Join(app, fn, "function.json")); err != nil {
			t.Errorf("%s/function.json: %v", fn, err)
		}
	}

	// The schemas must be able to fail: known-bad documents are rejected.
	bad := []struct {
		name   string
		schema *jsonschema.Schema
		doc    string
	}{
		{"host.json version 3.0", hostSchema, `{"version": "3.0"}`},
		{"host.json customHandler with an unknown key", hostSchema, `{"version": "2.0", "customHandler": {"enableForwarding": true}}`},
		{"host.json functionTimeout not a timespan", hostSchema, `{"version": "2.0", "functionTimeout": "5 minutes"}`},
		{"function.json binding without direction", fnSchema, `{"bindings": [{"type": "httpTrigger", "name": "req"}]}`},
		{"function.json httpTrigger with direction out", fnSchema, `{"bindings": [{"type": "httpTrigger", "direction": "out", "name": "req"}]}`},
	}
	for _, c := range bad {
		if err := validateBytes(c.schema, []byte(c.doc)); err == nil {
			t.Errorf("%s: schema accepted it", c.name)
		}
	}
}

func checkNames(t *testing.T, app string) {
	for _, fn := range functionDirs(t) {
		if !functionNameRE.MatchString(fn) {
			t.Errorf("function name %q does not match %s", fn, functionNameRE)
		}
		var f functionJSON
		readJSON(t, filepath.Join(app, fn, "function.json"), &f)
		if len(f.Bindings) == 0 {
			t.Errorf("%s: no bindings", fn)
		}
		seen := map[string]bool{}
		for _, b := range f.Bindings {
			name := b.str("name")
			if !bindingNameRE.MatchString(name) {
				t.Errorf("%s: binding name %q does not match %s", fn, name, bindingNameRE)
			}
			if seen[name] {
				t.Errorf("%s: binding name %q used twice", fn, name)
			}
			seen[name] = true
		}
	}
}

// checkHTTPForwarding: the host forwards the raw request only for a function
// whose bindings are exactly one httpTrigger in and one http out.
func checkHTTPForwarding(t *testing.T, app string) {
	var host hostJSON
	readJSON(t, filepath.Join(app, "host.json"), &host)
	if !host.CustomHandler.EnableForwardingHTTPRequest {
		t.Error("host.json customHandler.enableForwardingHttpRequest must be true")
	}
	var api functionJSON
	readJSON(t, filepath.Join(app, "api", "function.json"), &api)
	var in, out int
	for _, b := range api.Bindings {
		switch {
		case b.str("type") == "httpTrigger" && b.str("direction") == "in":
			in++
		case b.str("type") == "http" && b.str("direction") == "out":
			out++
		default:
			t.Errorf("api: binding %v stops forwarding (only one httpTrigger in and one http out allowed)", b)
		}
	}
	if in != 1 || out != 1 {
		t.Errorf("api has %d httpTrigger in and %d http out bindings, want exactly 1 and 1", in, out)
	}
}

func checkServiceBusTrigger(t *testing.T, app string) {
	var found int
	for _, fn := range functionDirs(t) {
		var f functionJSON
		readJSON(t, filepath.Join(app, fn, "function.json"), &f)
		for _, b := range f.Bindings {
			if b.str("type") != "serviceBusTrigger" {
				continue
			}
			found++
			if q := b.str("queueName"); q != "%JIT_SERVICEBUS_QUEUE%" {
				t.Errorf("%s: queueName %q, want %%JIT_SERVICEBUS_QUEUE%% (the setting the handler sends to)", fn, q)
			}
			if c := b.str("connection"); c != "ServiceBusConnection" {
				t.Errorf("%s: connection %q, want ServiceBusConnection (the app settings' prefix)", fn, c)
			}
			if s, _ := b["isSessionsEnabled"].(bool); s {
				t.Errorf("%s: isSessionsEnabled must be false: with sessions the batch trigger works one NSG at a time per instance", fn)
			}
			if c := b.str("cardinality"); c != "many" {
				t.Errorf("%s: cardinality %q, want many: the worker applies a batch's operations per NSG, one write each", fn, c)
			}
		}
	}
	if found != 1 {
		t.Errorf("found %d serviceBusTrigger bindings, want 1 (the worker)", found)
	}
	conn := settingByName("ServiceBusConnection__fullyQualifiedNamespace")
	if conn == nil || conn.Mode == "local" {
		t.Error("ServiceBusConnection__fullyQualifiedNamespace must be a documented functions setting")
	}
}

// checkSettingReferences: every %NAME% a binding reads is a
// setting of the registry that Functions mode uses.
func checkSettingReferences(t *testing.T, app string) {
	for _, fn := range functionDirs(t) {
		b, err := os.ReadFile(filepath.Join(app, fn, "function.json"))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range appSettingRefRE.FindAllStringSubmatch(string(b), -1) {
			s := settingByName(m[1])
			switch {
			case s == nil:
				t.Errorf("%s: binding reads %%%s%%, which handler/settings.go does not document", fn, m[1])
			case s.Mode == "local":
				t.Errorf("%s: binding reads %%%s%%, a local-mode setting", fn, m[1])
			case s.Default == "":
				t.Errorf("%s: %%%s%% has no default, so the host would not resolve it", fn, m[1])
			}
		}
	}
}

func settingByName(name string) *setting {
	for i := range allSettings {
		if allSettings[i].Name == name {
			return &allSettings[i]
		}
	}
	return nil
}
