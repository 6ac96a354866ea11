package tablestore

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestEscapeKeyRoundTrip(t *testing.T) {
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	cases := []string{
		"", "plain", "UPPER-lower", "slash/inside", `back\slash`, "hash#inside", "question?mark",
		"percent%2Fencoded", "with space", "ünïcödé", "quote'inside", "under_score", "tab\tnew\nline\x7f\u0085",
		"/subscriptions/00000000-0000-0000-0000-00000000000a/resourceGroups/RG-One/providers/Microsoft.Compute/virtualMachines/VM-A",
		"!2f", "~h", string(all),
	}
	for _, s := range cases {
		k := escapeKey(s)
		if strings.ContainsAny(k, "/\\#?_") || strings.IndexFunc(k, func(r rune) bool { return r < 0x20 || r >= 0x7f }) >= 0 {
			t.Errorf("escapeKey(%q) = %q: contains a character keys forbid or '_'", s, k)
		}
		back, err := unescapeKey(k)
		if err != nil || back != s {
			t.Errorf("unescapeKey(escapeKey(%q)) = %q, %v", s, back, err)
		}
	}
	if got := escapeKey("a/b"); got != "a!2fb" {
		t.Errorf(`escapeKey("a/b") = %q, want "a!2fb"`, got)
	}
}

func TestUnescapeKeyRejectsMalformed(t *testing.T) {
	for _, k := range []string{"!2", "!zz", "a/b", "!41", "~2f", "x_y", "!2F"} {
		if s, err := unescapeKey(k); err == nil {
			t.Errorf("unescapeKey(%q) = %q, want an error", k, s)
		}
	}
}

// TestEscapeKeyKeepsOrder checks that escaped keys sort as the raw bytes
// do, on random strings over an alphabet dense in the awkward bytes.
func TestEscapeKeyKeepsOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte("/09:@AZ[_`az{~\x00\x1f!#?\\-.\x7f\x80\xc3\xff")
	randomString := func() string {
		b := make([]byte, rng.IntN(6))
		for i := range b {
			if rng.IntN(4) == 0 {
				b[i] = byte(rng.IntN(256))
			} else {
				b[i] = alphabet[rng.IntN(len(alphabet))]
			}
		}
		return string(b)
	}
	for range 20000 {
		a, b := randomString(), randomString()
		if got, want := strings.Compare(escapeKey(a), escapeKey(b)), strings.Compare(a, b); got != want {
			t.Fatalf("compare(escapeKey(%q), escapeKey(%q)) = %d, raw compare = %d", a, b, got, want)
		}
	}
	// Sorting escaped ids gives the raw order, as ties in the indexes need.
	ids := []string{"e4b", "e4a", "e4", "e4/", "e4-", "E4", "e4\u00e9"}
	esc := make([]string, len(ids))
	for i, id := range ids {
		esc[i] = escapeKey(id)
	}
	slices.Sort(ids)
	slices.Sort(esc)
	for i := range ids {
		if back, _ := unescapeKey(esc[i]); back != ids[i] {
			t.Errorf("sorted escaped[%d] = %q, want %q", i, back, ids[i])
		}
	}
}

func TestTimeKey(t *testing.T) {
	base := time.Date(2025, 3, 4, 5, 6, 7, 123456789, time.UTC)
	times := []time.Time{
		{}, time.Unix(0, 0), time.Unix(-1, 999999999), time.Date(1601, 1, 1, 0, 0, 0, 0, time.UTC),
		base, base.Add(time.Nanosecond), base.Add(-time.Nanosecond), base.Add(time.Second),
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
	}
	for _, a := range times {
		ka := timeKey(a)
		if len(ka) != timeKeyLen {
			t.Errorf("timeKey(%v) = %q: length %d, want %d", a, ka, len(ka), timeKeyLen)
		}
		back, err := parseTimeKey(ka)
		if err != nil || !back.Equal(a) {
			t.Errorf("parseTimeKey(timeKey(%v)) = %v, %v", a, back, err)
		}
		for _, b := range times {
			if kb := timeKey(b); a.Before(b) != (ka > kb) {
				t.Errorf("%v before %v = %v, but keys %q > %q = %v", a, b, a.Before(b), ka, kb, ka > kb)
			}
		}
	}
	if timeKey(base) != timeKey(base.In(time.FixedZone("x", 7200))) {
		t.Error("timeKey depends on the zone")
	}
}

func TestVMKey(t *testing.T) {
	vm := "/subscriptions/00000000-0000-0000-0000-00000000000a/resourceGroups/RG-One/providers/Microsoft.Compute/virtualMachines/VM-A"
	if vmKey(vm) != vmKey(strings.ToLower(vm)) || vmKey(vm) != vmKey(strings.ToUpper(vm)) {
		t.Error("vmKey depends on case")
	}
	long := strings.Replace(vm, "RG-One", strings.Repeat("-", 90), 1)
	k := vmKey(long)
	if !strings.HasPrefix(k, "~h") || len(k) != 66 || k == vmKey(long+"x") {
		t.Errorf("vmKey of a long id = %q, want ~h and a SHA-256", k)
	}
}

func TestODataString(t *testing.T) {
	if got := odataString("it's"); got != "'it''s'" {
		t.Errorf("odataString(it's) = %s", got)
	}
}

func TestExpandConnectionString(t *testing.T) {
	want := "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=" + AzuriteAccountKey +
		";TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
	for _, in := range []string{"UseDevelopmentStorage=true", "UseDevelopmentStorage=true;", " usedevelopmentstorage = TRUE ;"} {
		if got := expandConnectionString(in); got != want {
			t.Errorf("expandConnectionString(%q) = %q, want %q", in, got, want)
		}
	}
	for _, in := range []string{
		"UseDevelopmentStorage=false",
		"UseDevelopmentStorage=true;DevelopmentStorageProxyUri=http://proxy",
		"DefaultEndpointsProtocol=https;AccountName=a;AccountKey=k;EndpointSuffix=core.windows.net",
	} {
		if got := expandConnectionString(in); got != in {
			t.Errorf("expandConnectionString(%q) = %q, want it unchanged", in, got)
		}
	}
	// The translation is what aztables needs: it parses into a client.
	if _, err := parseForTest(expandConnectionString("UseDevelopmentStorage=true")); err != nil {
		t.Errorf("aztables does not accept the expanded string: %v", err)
	}
}

// TestGenerationRow: no policy name has the generation row's key, and the
// row sorts before every policy row, which the policy writes rely on.
func TestGenerationRow(t *testing.T) {
	if _, err := unescapeKey(generationRow); err == nil {
		t.Errorf("%q is a possible output of escapeKey", generationRow)
	}
	for _, name := range []string{"0", "a", "A", "9-._", "zzz", "Prod-1.web_tier"} {
		row, err := policyRow(name)
		if err != nil {
			t.Fatal(err)
		}
		if row == generationRow || row <= generationRow {
			t.Errorf("policy %q has row %q, not after the generation row %q", name, row, generationRow)
		}
	}
}
