package tablestore

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"jitaccess/handler/jit"
)

// maxKeyLen bounds every PartitionKey and RowKey. Table Storage allows 1 KiB
// per key; our keys are ASCII, and 512 characters stay under that limit even
// if the service counts them as UTF-16.
const maxKeyLen = 512

const hexDigits = "0123456789abcdef"

// escapeKey maps s to a string Table Storage accepts in a key, reversibly,
// keeping byte order: escapeKey(a) < escapeKey(b) exactly when a < b.
//
// Letters and digits stay as they are. Any other byte becomes a prefix and
// two lower-case hex digits; the prefix is the one character, itself never
// kept as it is, that sorts between the kept characters around the byte:
// '!' for bytes below '0', ':' between '9' and 'A', '[' between 'Z' and 'a',
// '~' above 'z'. So "/" becomes "!2f" and "ü" "~c3~bc". The output never
// contains '/', '\', '#', '?', control characters or '_', which leaves '_'
// free to separate the parts of a composite key.
func escapeKey(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case '0' <= c && c <= '9', 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z':
			b.WriteByte(c)
		default:
			b.WriteByte(escapePrefix(c))
			b.WriteByte(hexDigits[c>>4])
			b.WriteByte(hexDigits[c&15])
		}
	}
	return b.String()
}

func escapePrefix(c byte) byte {
	switch {
	case c < '0':
		return '!'
	case c < 'A':
		return ':'
	case c < 'a':
		return '['
	default:
		return '~'
	}
}

// unescapeKey reverses escapeKey.
func unescapeKey(k string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch c {
		case '!', ':', '[', '~':
			if i+2 >= len(k) {
				return "", fmt.Errorf("malformed key %q: escape at %d is cut short", k, i)
			}
			v, err := hex.DecodeString(k[i+1 : i+3])
			if err != nil || escapePrefix(v[0]) != c || isKept(v[0]) || strings.ToLower(k[i+1:i+3]) != k[i+1:i+3] {
				return "", fmt.Errorf("malformed key %q: bad escape at %d", k, i)
			}
			b.WriteByte(v[0])
			i += 2
		default:
			if !isKept(c) {
				return "", fmt.Errorf("malformed key %q: unexpected %q at %d", k, c, i)
			}
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}

func isKept(c byte) bool {
	return '0' <= c && c <= '9' || 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z'
}

// vmKey is the key part of a VM id: ARM ids are case-insensitive, so the
// lower-case id, escaped. An id that escapes to more than vmKeyMax
// characters (possible only with group and VM names full of '-', '.' and
// '_') is replaced by "~h" and its SHA-256: never the output of escapeKey,
// since '~' is always followed by a hex digit there.
func vmKey(vm string) string {
	low := strings.ToLower(vm)
	if k := escapeKey(low); len(k) <= vmKeyMax {
		return k
	}
	sum := sha256.Sum256([]byte(low))
	return "~h" + hex.EncodeToString(sum[:])
}

const vmKeyMax = 300

// timeKeyLen is the length of a timeKey.
const timeKeyLen = 24

// timeKey encodes t in 24 lower-case hex digits whose string order is newest
// first: the Unix seconds with the sign bit flipped (so that times before
// 1970, and the zero time, sort too) and the nanoseconds, both inverted.
// Unlike Table Storage's DateTime (which starts in 1601 at 100 ns
// precision) it keeps every time.Time exactly.
func timeKey(t time.Time) string {
	return fmt.Sprintf("%016x%08x", ^(uint64(t.Unix()) ^ 1<<63), ^uint32(t.Nanosecond()))
}

// positionKey is the row key part (after any prefix) of the item at p in
// a newest-first index: rows after p have greater keys.
func positionKey(p jit.Position) string {
	return timeKey(p.Time) + escapeKey(p.ID)
}

// parseTimeKey reverses timeKey for the first timeKeyLen characters of k.
func parseTimeKey(k string) (time.Time, error) {
	if len(k) < timeKeyLen {
		return time.Time{}, errors.New("time key too short")
	}
	var sec uint64
	var nsec uint32
	if _, err := fmt.Sscanf(k[:timeKeyLen], "%016x%08x", &sec, &nsec); err != nil {
		return time.Time{}, fmt.Errorf("malformed time key %q: %w", k[:timeKeyLen], err)
	}
	return time.Unix(int64(^sec^1<<63), int64(^nsec)).UTC(), nil
}

// prefixEnd returns the smallest string greater than every string that
// starts with prefix, for an exclusive upper bound of a range query. Our
// prefixes end in an ASCII character below '~', so incrementing it works.
func prefixEnd(prefix string) string {
	last := prefix[len(prefix)-1]
	return prefix[:len(prefix)-1] + string(last+1)
}

// odataString quotes s as an OData string literal: single quotes doubled,
// so that no value can end the literal and add a clause of its own.
func odataString(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}
