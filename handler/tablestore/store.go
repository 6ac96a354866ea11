package tablestore

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"

	"jitaccess/handler/jit"
)

// Config tunes a Store. The zero value is ready to use.
type Config struct {
	// TablePrefix starts the three table names: <prefix>policies,
	// <prefix>requests and <prefix>audit. Letters and digits, starting with
	// a letter, at most 50 characters; "jit" when empty. Tests give each
	// store its own prefix to isolate it.
	TablePrefix string
	// PageSize is how many entities one query page asks for, 1 to 1000;
	// 1000 (the service's maximum) when zero. Tests make it small to cross
	// page boundaries.
	PageSize int
	// ClientOptions are passed to the aztables clients (retries, transport).
	ClientOptions *aztables.ClientOptions
}

// Store implements jit.Store on Azure Table Storage (or Azurite).
type Store struct {
	policies *aztables.Client
	requests *aztables.Client
	audit    *aztables.Client
	pageSize int
}

var _ jit.Store = (*Store)(nil)

// setupTimeout bounds the table creation a constructor does.
const setupTimeout = 30 * time.Second

// AzuriteAccountKey is the key of Azurite's development account
// devstoreaccount1, as Microsoft publishes it in Azurite's documentation.
// It is not a secret: it only ever opens a local emulator.
const AzuriteAccountKey = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

// NewFromConnectionString returns a Store for a storage connection string
// (shared key or SAS), creating its tables when missing.
// "UseDevelopmentStorage=true", which aztables does not parse, stands for
// Azurite on its default port.
func NewFromConnectionString(connStr string, cfg Config) (*Store, error) {
	svc, err := aztables.NewServiceClientFromConnectionString(expandConnectionString(connStr), cfg.ClientOptions)
	if err != nil {
		// The error of aztables does not repeat the string, which may hold a key.
		return nil, fmt.Errorf("table storage connection string: %w", err)
	}
	return newStore(svc, cfg)
}

// NewWithCredential returns a Store for the table service at serviceURL
// (https://ACCOUNT.table.core.windows.net/, the JIT_TABLES_URL setting)
// reached with cred, typically the app's managed identity, creating its
// tables when missing. The identity needs the "Storage Table Data
// Contributor" role on the account.
func NewWithCredential(serviceURL string, cred azcore.TokenCredential, cfg Config) (*Store, error) {
	svc, err := aztables.NewServiceClient(serviceURL, cred, cfg.ClientOptions)
	if err != nil {
		return nil, fmt.Errorf("table service client for %s: %w", serviceURL, err)
	}
	return newStore(svc, cfg)
}

var prefixPattern = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9]{0,49}$`)

func newStore(svc *aztables.ServiceClient, cfg Config) (*Store, error) {
	prefix := cfg.TablePrefix
	if prefix == "" {
		prefix = "jit"
	}
	if !prefixPattern.MatchString(prefix) {
		return nil, fmt.Errorf("table prefix %q: use 1 to 50 letters and digits, starting with a letter", prefix)
	}
	size := cfg.PageSize
	if size == 0 {
		size = 1000
	}
	if size < 1 || size > 1000 {
		return nil, fmt.Errorf("table page size %d: use 1 to 1000", size)
	}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	clients := make([]*aztables.Client, 3)
	for i, name := range []string{"policies", "requests", "audit"} {
		table := prefix + name
		if _, err := svc.CreateTable(ctx, table, nil); err != nil && !hasCode(err, aztables.TableAlreadyExists) {
			return nil, fmt.Errorf("create table %s: %w", table, err)
		}
		clients[i] = svc.NewClient(table)
	}
	return &Store{policies: clients[0], requests: clients[1], audit: clients[2], pageSize: size}, nil
}

// expandConnectionString turns the development-storage shortcut into the
// explicit form for Azurite's default table endpoint; any other string is
// returned unchanged.
func expandConnectionString(s string) string {
	dev := false
	for part := range strings.SplitSeq(s, ";") {
		k, v, _ := strings.Cut(part, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch {
		case k == "":
		case strings.EqualFold(k, "UseDevelopmentStorage") && strings.EqualFold(v, "true"):
			dev = true
		default:
			return s // anything else (a proxy URI, a key): leave it to aztables
		}
	}
	if !dev {
		return s
	}
	return "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=" + AzuriteAccountKey +
		";TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
}

// Payload layout. A record is the JSON of its jit struct (ETag left out),
// split over string properties D0, D1, ... of at most chunkSize bytes, cut
// at rune boundaries. A string property may hold 64 KiB of UTF-16; 30,000
// bytes of UTF-8 are at most 30,000 UTF-16 code units (60,000 bytes). An
// entity may hold 1 MiB, so a record is at most maxPayload bytes of JSON,
// twice that in UTF-16 plus keys and small properties.
const (
	chunkSize  = 30000
	maxPayload = 15 * chunkSize
)

// entity is an aztables entity as JSON properties.
type entity map[string]any

func newEntity(pk, rk string) entity {
	return entity{"PartitionKey": pk, "RowKey": rk}
}

// compressAbove is the JSON size above which a record is stored gzipped
// (base64 in properties Z0, Z1, ... instead of D0, D1, ...): a policy of
// 1,000 VMs is about 460 KB of JSON but compresses about tenfold.
const compressAbove = 16 << 10

// maxRecord bounds a record's JSON once decompressed.
const maxRecord = 16 << 20

// setPayload stores v's JSON in e. what names the record for messages.
func (e entity) setPayload(v any, what string) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", what, err)
	}
	prefix := "D"
	if len(data) > compressAbove {
		if len(data) > maxRecord {
			return jit.Errorf(jit.EINVALID, "%s is too large to store: %d bytes encoded, the limit is %d", what, len(data), maxRecord)
		}
		var zb bytes.Buffer
		zw := gzip.NewWriter(&zb)
		_, _ = zw.Write(data)
		_ = zw.Close()
		data, prefix = []byte(base64.StdEncoding.EncodeToString(zb.Bytes())), "Z"
	}
	if len(data) > maxPayload {
		return jit.Errorf(jit.EINVALID, "%s is too large to store: %d bytes encoded, the limit is %d", what, len(data), maxPayload)
	}
	for i := 0; len(data) > 0; i++ {
		n := min(chunkSize, len(data))
		for n < len(data) && !utf8.RuneStart(data[n]) {
			n--
		}
		e[prefix+strconv.Itoa(i)] = string(data[:n])
		data = data[n:]
	}
	return nil
}

// payloadProps returns the names of the properties holding e's record.
func (e entity) payloadProps() []string {
	var out []string
	for _, prefix := range []string{"D", "Z"} {
		for i := 0; ; i++ {
			name := prefix + strconv.Itoa(i)
			if _, ok := e[name].(string); !ok {
				break
			}
			out = append(out, name)
		}
	}
	return out
}

// payload decodes the record stored by setPayload into v.
func (e entity) payload(v any) error {
	var b strings.Builder
	compressed := false
	for _, name := range e.payloadProps() {
		b.WriteString(e[name].(string))
		compressed = compressed || name[0] == 'Z'
	}
	if b.Len() == 0 {
		return fmt.Errorf("entity %v/%v has no payload", e["PartitionKey"], e["RowKey"])
	}
	data := []byte(b.String())
	if compressed {
		raw, err := base64.StdEncoding.DecodeString(b.String())
		if err != nil {
			return fmt.Errorf("decode entity %v/%v: %w", e["PartitionKey"], e["RowKey"], err)
		}
		zr, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			return fmt.Errorf("decode entity %v/%v: %w", e["PartitionKey"], e["RowKey"], err)
		}
		if data, err = io.ReadAll(io.LimitReader(zr, maxRecord+1)); err != nil || len(data) > maxRecord {
			return fmt.Errorf("decode entity %v/%v: the record does not decompress within %d bytes: %v", e["PartitionKey"], e["RowKey"], maxRecord, err)
		}
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode entity %v/%v: %w", e["PartitionKey"], e["RowKey"], err)
	}
	return nil
}

func (e entity) str(name string) string {
	s, _ := e[name].(string)
	return s
}

// etag is the entity's Table ETag, as a query returns it.
func (e entity) etag() string { return e.str("odata.etag") }

func (e entity) marshal() []byte {
	data, err := json.Marshal(e)
	if err != nil {
		panic(fmt.Sprintf("tablestore: encode entity: %v", err)) // only strings inside: cannot happen
	}
	return data
}

func parseEntity(data []byte) (entity, error) {
	var e entity
	if err := json.Unmarshal(data, &e); err != nil {
		return nil, fmt.Errorf("decode entity: %w", err)
	}
	return e, nil
}

// scan runs a query on c page by page and calls fn for each entity, until
// fn returns false or an error, or the entities run out. top caps the page
// size (0: the store's page size).
func (s *Store) scan(ctx context.Context, c *aztables.Client, filter string, top int, fn func(entity) (bool, error)) error {
	size := s.pageSize
	if top > 0 {
		size = min(size, top)
	}
	n := int32(size)
	pager := c.NewListEntitiesPager(&aztables.ListEntitiesOptions{Filter: &filter, Top: &n})
	for pager.More() {
		if err := ctx.Err(); err != nil {
			return err
		}
		page, err := pager.NextPage(ctx)
		if err != nil {
			return storeError(err, "query table")
		}
		for _, data := range page.Entities {
			e, err := parseEntity(data)
			if err != nil {
				return err
			}
			more, err := fn(e)
			if err != nil || !more {
				return err
			}
		}
	}
	return nil
}

// get reads one entity; ok is false when it does not exist.
func get(ctx context.Context, c *aztables.Client, pk, rk string) (e entity, etag string, ok bool, err error) {
	resp, err := c.GetEntity(ctx, pk, rk, nil)
	if isNotFound(err) {
		return nil, "", false, nil
	}
	if err != nil {
		return nil, "", false, err
	}
	e, err = parseEntity(resp.Value)
	return e, string(resp.ETag), err == nil, err
}

func hasCode(err error, code aztables.TableErrorCode) bool {
	var re *azcore.ResponseError
	return errors.As(err, &re) && re.ErrorCode == string(code)
}

func status(err error) int {
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}

func isNotFound(err error) bool { return err != nil && status(err) == http.StatusNotFound }
func isConflict(err error) bool { return err != nil && status(err) == http.StatusConflict }
func isPreconditionFailed(err error) bool {
	return err != nil && status(err) == http.StatusPreconditionFailed
}

// storeError wraps a failure of the table service: throttling, server
// errors and failed connections are EUNAVAILABLE (worth retrying), the rest
// plain errors (EINTERNAL). The message of a jit.Error stays safe to show.
func storeError(err error, doing string) error {
	if err == nil {
		return nil
	}
	var je *jit.Error
	if errors.As(err, &je) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	code := status(err)
	if code == 0 || code == http.StatusTooManyRequests || code >= 500 {
		return jit.Wrap(jit.EUNAVAILABLE, fmt.Errorf("%s: %w", doing, err), "the state store is unavailable: try again later")
	}
	return fmt.Errorf("%s: %w", doing, err)
}

// newVersion returns a random version tag for records whose writes are
// transactions (whose responses carry no ETags).
func newVersion() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
