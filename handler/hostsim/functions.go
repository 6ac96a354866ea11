package hostsim

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"jitaccess/handler/testenv"
)

// Binding is one entry of a function.json's "bindings", as far as the
// host simulator reads it.
type Binding struct {
	Type              string `json:"type"`
	Direction         string `json:"direction"`
	Name              string `json:"name"`
	QueueName         string `json:"queueName,omitempty"`
	Connection        string `json:"connection,omitempty"`
	IsSessionsEnabled bool   `json:"isSessionsEnabled,omitempty"`
	Cardinality       string `json:"cardinality,omitempty"`
	DataType          string `json:"dataType,omitempty"`
}

// Many reports whether the trigger delivers batches ("cardinality": "many").
func (b Binding) Many() bool { return strings.EqualFold(b.Cardinality, "many") }

// Function is one function folder: its name (the folder's) and the
// bindings of its function.json.
type Function struct {
	Name     string    `json:"-"`
	Bindings []Binding `json:"bindings"`
}

// Trigger returns the function's trigger binding.
func (f Function) Trigger() (Binding, bool) {
	for _, b := range f.Bindings {
		if strings.EqualFold(b.Direction, "in") && strings.HasSuffix(strings.ToLower(b.Type), "trigger") {
			return b, true
		}
	}
	return Binding{}, false
}

// LoadFunctions reads dir/*/function.json, as the host finds the function
// folders beside host.json, in name order.
func LoadFunctions(dir string) ([]Function, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*", "function.json"))
	if err != nil {
		return nil, fmt.Errorf("listing functions in %s: %w", dir, err)
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("no */function.json in %s", dir)
	}
	sort.Strings(paths)
	var fns []Function
	for _, p := range paths {
		raw, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", p, err)
		}
		f := Function{Name: filepath.Base(filepath.Dir(p))}
		if err := json.Unmarshal(raw, &f); err != nil {
			return nil, fmt.Errorf("parsing %s: %w", p, err)
		}
		fns = append(fns, f)
	}
	return fns, nil
}

// RepoFunctions loads the repository's functions/ folder.
func RepoFunctions() ([]Function, error) {
	root, err := testenv.FindRepoRoot()
	if err != nil {
		return nil, err
	}
	return LoadFunctions(filepath.Join(root, "functions"))
}

// HostSettings are the host.json settings that shape what the host does.
type HostSettings struct {
	// FunctionTimeout bounds an invocation; the host's HTTP client waits
	// FunctionTimeout + 1 minute. Default 5 minutes.
	FunctionTimeout time.Duration
	ServiceBus      ServiceBusSettings
}

// ServiceBusSettings are host.json's extensions.serviceBus settings that
// shape delivery.
type ServiceBusSettings struct {
	// MaxConcurrentCalls is how many messages one instance works on at
	// once with single dispatch and no sessions. Default 16. A batch
	// trigger works on one batch at a time.
	MaxConcurrentCalls int
	// MaxConcurrentSessions is how many sessions one instance works on at
	// once with single dispatch. Default 8. A batch trigger works on one.
	MaxConcurrentSessions int
	// MaxMessageBatchSize is the most messages of one invocation with
	// "cardinality": "many". Default 1000.
	MaxMessageBatchSize int
	// SessionIdleTimeout is how long an instance keeps a session after its
	// last message while waiting for the next. Default 1 minute (the Service
	// Bus client's try timeout).
	SessionIdleTimeout time.Duration
}

func (s HostSettings) withDefaults() HostSettings {
	if s.FunctionTimeout <= 0 {
		s.FunctionTimeout = 5 * time.Minute
	}
	if s.ServiceBus.MaxConcurrentCalls <= 0 {
		s.ServiceBus.MaxConcurrentCalls = 16
	}
	if s.ServiceBus.MaxConcurrentSessions <= 0 {
		s.ServiceBus.MaxConcurrentSessions = 8
	}
	if s.ServiceBus.MaxMessageBatchSize <= 0 {
		s.ServiceBus.MaxMessageBatchSize = 1000
	}
	if s.ServiceBus.SessionIdleTimeout <= 0 {
		s.ServiceBus.SessionIdleTimeout = time.Minute
	}
	return s
}

// LoadHostJSON reads the settings hostsim honours from a host.json; what
// it leaves unset takes the host's defaults.
func LoadHostJSON(path string) (HostSettings, error) {
	var hs HostSettings
	raw, err := os.ReadFile(path)
	if err != nil {
		return hs, fmt.Errorf("reading host.json: %w", err)
	}
	var doc struct {
		FunctionTimeout string `json:"functionTimeout"`
		Extensions      struct {
			ServiceBus struct {
				MaxConcurrentCalls    int    `json:"maxConcurrentCalls"`
				MaxConcurrentSessions int    `json:"maxConcurrentSessions"`
				MaxMessageBatchSize   int    `json:"maxMessageBatchSize"`
				SessionIdleTimeout    string `json:"sessionIdleTimeout"`
			} `json:"serviceBus"`
		} `json:"extensions"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return hs, fmt.Errorf("parsing %s: %w", path, err)
	}
	if hs.FunctionTimeout, err = parseTimeSpan(doc.FunctionTimeout); err != nil {
		return hs, fmt.Errorf("%s: functionTimeout: %w", path, err)
	}
	sb := doc.Extensions.ServiceBus
	hs.ServiceBus.MaxConcurrentCalls = sb.MaxConcurrentCalls
	hs.ServiceBus.MaxConcurrentSessions = sb.MaxConcurrentSessions
	hs.ServiceBus.MaxMessageBatchSize = sb.MaxMessageBatchSize
	if hs.ServiceBus.SessionIdleTimeout, err = parseTimeSpan(sb.SessionIdleTimeout); err != nil {
		return hs, fmt.Errorf("%s: extensions.serviceBus.sessionIdleTimeout: %w", path, err)
	}
	return hs.withDefaults(), nil
}

// RepoHostSettings loads the repository's host.json.
func RepoHostSettings() (HostSettings, error) {
	root, err := testenv.FindRepoRoot()
	if err != nil {
		return HostSettings{}, err
	}
	return LoadHostJSON(filepath.Join(root, "host.json"))
}

// parseTimeSpan reads a .NET TimeSpan as host.json writes it:
// [d.]hh:mm:ss[.fffffff]; empty is zero.
func parseTimeSpan(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	var days int
	rest := s
	if i := strings.IndexByte(s, '.'); i >= 0 && i < strings.IndexByte(s, ':') {
		d, err := strconv.Atoi(s[:i])
		if err != nil {
			return 0, fmt.Errorf("%q is not a time span", s)
		}
		days, rest = d, s[i+1:]
	}
	parts := strings.Split(rest, ":")
	if len(parts) != 3 {
		return 0, fmt.Errorf("%q is not a time span (hh:mm:ss)", s)
	}
	h, err1 := strconv.Atoi(parts[0])
	m, err2 := strconv.Atoi(parts[1])
	sec, err3 := strconv.ParseFloat(parts[2], 64)
	if err1 != nil || err2 != nil || err3 != nil || h < 0 || m < 0 || m > 59 || sec < 0 || sec >= 60 {
		return 0, fmt.Errorf("%q is not a time span (hh:mm:ss)", s)
	}
	return time.Duration(days)*24*time.Hour + time.Duration(h)*time.Hour + time.Duration(m)*time.Minute +
		time.Duration(sec*float64(time.Second)), nil
}
