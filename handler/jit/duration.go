package jit

import (
	"math"
	"strconv"
	"strings"
	"time"
)

// maxParsedSeconds bounds durations: nothing here lasts longer than a year.
const maxParsedSeconds = 366 * 24 * 3600

// ParseDuration parses an ISO 8601 duration of days, hours, minutes and
// seconds, such as PT3H, PT30M, P1D or PT1H30M, as Defender's API uses.
func ParseDuration(s string) (time.Duration, error) {
	bad := Errorf(EINVALID, "duration %q is not an ISO 8601 duration such as PT1H or PT30M", shorten(s))
	t := strings.TrimSpace(s)
	for i := 0; i < len(t); i++ {
		if t[i] >= 0x80 {
			return 0, bad // ToUpper would fold non-ASCII letters into units
		}
	}
	u := strings.ToUpper(t)
	if len(u) < 3 || u[0] != 'P' || len(u) > 40 {
		return 0, bad
	}
	// Summed in seconds as a float and bounded, so no term or total can
	// overflow time.Duration.
	var total float64
	inTime := false
	units := 0
	num := ""
	last := byte(0)
	for i := 1; i < len(u); i++ {
		c := u[i]
		switch {
		case c >= '0' && c <= '9' || c == '.' || c == ',':
			num += string(c)
			continue
		case c == 'T':
			if inTime || num != "" {
				return 0, bad
			}
			inTime = true
			continue
		}
		if num == "" {
			return 0, bad
		}
		var unit time.Duration
		order := byte(0)
		switch {
		case !inTime && c == 'W':
			unit, order = 7*24*time.Hour, 1
		case !inTime && c == 'D':
			unit, order = 24*time.Hour, 2
		case inTime && c == 'H':
			unit, order = time.Hour, 3
		case inTime && c == 'M':
			unit, order = time.Minute, 4
		case inTime && c == 'S':
			unit, order = time.Second, 5
		default:
			return 0, bad
		}
		if order <= last {
			return 0, bad
		}
		last = order
		f, err := strconv.ParseFloat(strings.Replace(num, ",", ".", 1), 64)
		if err != nil || f < 0 || f > 1e6 {
			return 0, bad
		}
		total += f * unit.Seconds()
		num = ""
		units++
	}
	if num != "" || units == 0 {
		return 0, bad
	}
	if total > maxParsedSeconds {
		return 0, Errorf(EINVALID, "duration %q is longer than a year", shorten(s))
	}
	return time.Duration(math.Round(total * float64(time.Second))), nil
}

// FormatDuration formats d as an ISO 8601 duration (PT3H, P1D, PT1H30M).
func FormatDuration(d time.Duration) string {
	if d <= 0 {
		return "PT0S"
	}
	var b strings.Builder
	b.WriteString("P")
	if days := d / (24 * time.Hour); days > 0 {
		b.WriteString(strconv.FormatInt(int64(days), 10) + "D")
		d -= days * 24 * time.Hour
	}
	if d == 0 {
		return b.String()
	}
	b.WriteString("T")
	if h := d / time.Hour; h > 0 {
		b.WriteString(strconv.FormatInt(int64(h), 10) + "H")
		d -= h * time.Hour
	}
	if m := d / time.Minute; m > 0 {
		b.WriteString(strconv.FormatInt(int64(m), 10) + "M")
		d -= m * time.Minute
	}
	if d > 0 {
		b.WriteString(strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "S")
	}
	return b.String()
}
