package jit

import "time"

// Position is a place in a listing ordered newest first, ties in ascending
// id order (requests by StartTime, audit events by Time): the item with
// this time and id. A listing After a position resumes with the item that
// follows it, so pages stay in step while items are added in front.
type Position struct {
	Time time.Time
	ID   string
}

// IsZero reports whether p is no position: a listing from the start.
func (p Position) IsZero() bool { return p.Time.IsZero() && p.ID == "" }

// Follows reports whether the item at t with id comes after p in the
// listing's order. Every item follows the zero position.
func (p Position) Follows(t time.Time, id string) bool {
	switch {
	case p.IsZero():
		return true
	case t.Equal(p.Time):
		return id > p.ID
	}
	return t.Before(p.Time)
}
