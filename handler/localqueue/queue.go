// Package localqueue is the durable due-time queue of local mode: it
// implements jit.Queue in buckets of the same bbolt file that boltstore
// uses, and delivers operations to a jit.Worker in-process. Like Service Bus
// sessions in Azure, it runs the operations of one NSG one at a time and
// those of different NSGs in parallel; like Service Bus it delivers at least
// once and retries failures with backoff.
//
// It depends on jit, bbolt and zerolog only; it must not know about the
// store's buckets, HTTP or Azure.
package localqueue

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/bbolt"

	"jitaccess/handler/jit"
)

// Bucket layout, all keyed by the operation's sequence number (8 bytes, big
// endian), which is also its enqueue order:
//
//	queue_ops     seq → record (JSON): scheduled and in-flight operations
//	queue_op_ids  operation ID → seq, so a duplicate Enqueue finds its twin
//	queue_dead    seq → DeadLetter (JSON): operations that ran out of attempts
var (
	bucketOps   = []byte("queue_ops")
	bucketOpIDs = []byte("queue_op_ids")
	bucketDead  = []byte("queue_dead")
)

// Options tune a Queue. Zero values take the defaults.
type Options struct {
	// Concurrency is how many deliveries (and so NSGs) run at once. Default 8.
	Concurrency int
	// MaxBatch is how many due operations of one NSG the worker gets in one
	// delivery. Default 200.
	MaxBatch int
	// InitialBackoff is the wait before the first retry of a failed
	// operation; each further failure doubles it up to MaxBackoff. The actual
	// wait is jittered between half and all of it. Defaults 1s and 1m.
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	// MaxAttempts is how many deliveries an operation gets before it moves to
	// the dead letters. Default 10. The service's sweeper still closes grants
	// whose close operation died.
	MaxAttempts int
	// Logger receives one event per failure, dead letter and restart load.
	Logger zerolog.Logger
	// Now is the clock for due times. Default time.Now.
	Now func() time.Time
}

func (o *Options) setDefaults() {
	if o.Concurrency <= 0 {
		o.Concurrency = 8
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 200
	}
	if o.InitialBackoff <= 0 {
		o.InitialBackoff = time.Second
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = time.Minute
	}
	o.MaxBackoff = max(o.MaxBackoff, o.InitialBackoff)
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 10
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// DeadLetter is an operation that failed MaxAttempts times.
type DeadLetter struct {
	Ticket    string        `json:"Ticket"` // the operation's id
	Op        jit.Operation `json:"Op"`
	Attempts  int           `json:"Attempts"`
	LastError string        `json:"LastError"`
	DeadAt    time.Time     `json:"DeadAt"`
}

// record is what queue_ops keeps per operation.
type record struct {
	Op        jit.Operation `json:"Op"`
	Due       time.Time     `json:"Due"`      // next delivery; Op.Due, or now when that was zero, then backoff
	Attempts  int           `json:"Attempts"` // failed deliveries so far
	LastError string        `json:"LastError,omitempty"`
}

type item struct {
	seq   uint64
	nsg   string // lower case: ARM ids are case-insensitive
	rec   record
	index int // position in its NSG's heap while waiting
}

// before orders items by due time, then enqueue order.
func (a *item) before(b *item) bool {
	if !a.rec.Due.Equal(b.rec.Due) {
		return a.rec.Due.Before(b.rec.Due)
	}
	return a.seq < b.seq
}

// Queue is a durable jit.Queue in a bbolt file.
//
// Per NSG, the operation with the earliest due time (then the earliest
// enqueued) runs next, and nothing else of that NSG runs until it returns;
// the NSG's other due operations (up to MaxBatch, in due order) go with it
// in one delivery. A
// failed operation's due time moves on by its backoff, so later operations
// of the same NSG may run before its retry: the worker is idempotent and safe
// out of order, and one failing operation must not block an NSG for minutes.
//
// The schedule lives in memory, mirrored from queue_ops: every change is
// written to bbolt first, under mu, so memory and file never disagree about
// what is queued.
type Queue struct {
	db   *bbolt.DB
	w    jit.Worker
	opt  Options
	log  zerolog.Logger
	wake chan struct{}

	// work is the context operations run with. It outlives Start's context
	// so that a shutdown lets running operations finish; Close cancels it
	// when its own deadline passes.
	work       context.Context
	cancelWork context.CancelFunc
	inflight   sync.WaitGroup

	mu      sync.Mutex
	waiting schedule // scheduled, not running
	running map[uint64]*item
	started bool
	closed  bool
	stop    chan struct{} // closed by Close
	stopped chan struct{} // closed when the dispatcher returns

	// deliveries counts running calls of the worker (under mu); a batch is one.
	deliveries int
}

var _ jit.Queue = (*Queue)(nil)

// New returns a Queue on db, with every operation that was queued in db
// before (after a restart, say) scheduled again. Operations can be queued
// at once; nothing runs until Start gives the worker.
func New(db *bbolt.DB, opt Options) (*Queue, error) {
	opt.setDefaults()
	q := &Queue{
		db:      db,
		opt:     opt,
		log:     opt.Logger,
		wake:    make(chan struct{}, 1),
		waiting: newSchedule(),
		running: map[uint64]*item{},
		stop:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	q.work, q.cancelWork = context.WithCancel(context.Background())
	err := db.Update(func(tx *bbolt.Tx) error {
		for _, name := range [][]byte{bucketOps, bucketOpIDs, bucketDead} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		return tx.Bucket(bucketOps).ForEach(func(k, v []byte) error {
			var rec record
			if len(k) != 8 {
				return fmt.Errorf("malformed queue key %x", k)
			}
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("decode queued operation %x: %w", k, err)
			}
			seq := binary.BigEndian.Uint64(k)
			q.waiting.add(&item{seq: seq, nsg: strings.ToLower(rec.Op.NSG), rec: rec})
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("load local queue: %w", err)
	}
	if n := q.waiting.len(); n > 0 {
		q.log.Info().Int("operations", n).Msg("queued operations loaded")
	}
	return q, nil
}

// Start runs the dispatcher in the background, delivering to w, until ctx
// is done or Close is called. Operations already due run at once. Running
// operations do not see ctx's cancellation, so a shutdown lets them
// finish; Close bounds the wait.
func (q *Queue) Start(ctx context.Context, w jit.Worker) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.started {
		return errors.New("local queue already started")
	}
	if q.closed {
		return errors.New("local queue is closed")
	}
	if w == nil {
		return errors.New("local queue started without a worker")
	}
	q.started, q.w = true, w
	go q.dispatch(ctx)
	return nil
}

// Close stops the dispatcher and waits for running operations to finish, or
// for ctx to be done, whichever is first; in the latter case it cancels the
// operations' context and returns an error. Operations not yet run stay in
// the file for the next start. Close does not close db.
func (q *Queue) Close(ctx context.Context) error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	close(q.stop)
	started := q.started
	q.mu.Unlock()
	if started {
		<-q.stopped
	}
	done := make(chan struct{})
	go func() {
		q.inflight.Wait()
		close(done)
	}()
	select {
	case <-done:
		q.cancelWork()
		return nil
	case <-ctx.Done():
		q.cancelWork()
		q.mu.Lock()
		n := len(q.running)
		q.mu.Unlock()
		q.log.Warn().Int("running", n).Msg("local queue closed with operations still running")
		return fmt.Errorf("close local queue: %d operations still running: %w", n, ctx.Err())
	}
}

// Enqueue stores ops and schedules each at its Due time (now when zero).
// An op whose ID is queued already is not stored again.
func (q *Queue) Enqueue(ctx context.Context, ops []jit.Operation) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkOps(ops); err != nil {
		return err
	}
	var committed func()
	// The commit runs without q.mu, so concurrent Enqueues share one
	// commit and its fsync; the ids bucket, checked inside the
	// transaction, still stores each op id once.
	err := q.db.Batch(func(tx *bbolt.Tx) error {
		var err error
		committed, err = q.stage(tx, ops) // Batch may run this more than once
		return err
	})
	if err != nil {
		return fmt.Errorf("enqueue operations: %w", err)
	}
	committed()
	return nil
}

func checkOps(ops []jit.Operation) error {
	for i, op := range ops {
		if op.ID == "" {
			return jit.Errorf(jit.EINVALID, "operation %d has no id", i)
		}
		if op.NSG == "" {
			return jit.Errorf(jit.EINVALID, "operation %q names no NSG", op.ID)
		}
	}
	return nil
}

// stage stores ops in tx. Once tx has committed, the caller calls the
// returned func, which schedules them; if tx rolls back, it must not. An
// op whose ID is queued already is not stored again.
func (q *Queue) stage(tx *bbolt.Tx, ops []jit.Operation) (committed func(), err error) {
	b, ids := tx.Bucket(bucketOps), tx.Bucket(bucketOpIDs)
	now := q.opt.Now()
	var added []*item
	for _, op := range ops {
		if ids.Get([]byte(op.ID)) != nil {
			continue
		}
		seq, err := b.NextSequence()
		if err != nil {
			return nil, err
		}
		it := &item{seq: seq, nsg: strings.ToLower(op.NSG), rec: record{Op: op, Due: op.Due}}
		if it.rec.Due.IsZero() {
			it.rec.Due = now
		}
		if err := putRecord(b, seq, it.rec); err != nil {
			return nil, err
		}
		if err := ids.Put([]byte(op.ID), seqKey(seq)); err != nil {
			return nil, err
		}
		added = append(added, it)
	}
	return func() {
		q.mu.Lock()
		defer q.mu.Unlock()
		for _, it := range added {
			q.waiting.add(it)
			q.log.Debug().Str("op", it.rec.Op.ID).Str("kind", it.rec.Op.Kind).Str("nsg", it.rec.Op.NSG).
				Time("due", it.rec.Due).Uint64("seq", it.seq).Msg("operation queued")
		}
		q.signal()
	}, nil
}

// Pending returns how many operations are queued, running ones included.
func (q *Queue) Pending(ctx context.Context) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	n := 0
	err := q.db.View(func(tx *bbolt.Tx) error {
		n = tx.Bucket(bucketOps).Stats().KeyN
		return nil
	})
	return n, err
}

// DeadLetters returns the operations that ran out of attempts, oldest first.
func (q *Queue) DeadLetters(ctx context.Context) ([]DeadLetter, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var dls []DeadLetter
	err := q.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketDead).ForEach(func(k, v []byte) error {
			var dl DeadLetter
			if err := json.Unmarshal(v, &dl); err != nil {
				return fmt.Errorf("decode dead letter %x: %w", k, err)
			}
			dls = append(dls, dl)
			return nil
		})
	})
	return dls, err
}

// signal wakes the dispatcher without blocking; one pending wake-up is
// enough because the dispatcher looks at the whole schedule each time.
func (q *Queue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// dispatch starts operations as they fall due and sleeps until the next due
// time or a wake-up, never on a polling interval.
func (q *Queue) dispatch(ctx context.Context) {
	defer close(q.stopped)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		if wait, ok := q.startDue(); ok {
			timer.Reset(wait)
		}
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-q.stop:
			timer.Stop()
			return
		case <-q.wake:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// startDue starts every operation that is due, at the head of its NSG, and
// fits within Concurrency, and returns how long until the next head falls
// due (ok false when nothing waits that a timer could start).
func (q *Queue) startDue() (wait time.Duration, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return 0, false
	}
	now := q.opt.Now()
	for {
		h := q.waiting.first()
		if h == nil {
			return 0, false
		}
		if h.rec.Due.After(now) {
			return h.rec.Due.Sub(now), true
		}
		if q.deliveries >= q.opt.Concurrency {
			return 0, false // a finishing operation wakes the dispatcher
		}
		batch := q.waiting.takeDue(h.nsg, func(it *item) bool { return !it.rec.Due.After(now) }, q.opt.MaxBatch)
		for _, it := range batch {
			q.running[it.seq] = it
		}
		q.waiting.hold(h.nsg)
		q.deliveries++
		q.inflight.Add(1)
		go q.deliver(batch)
	}
}

// deliver runs due operations of one NSG in one call of the worker and
// records each outcome.
func (q *Queue) deliver(items []*item) {
	defer q.inflight.Done()
	ops := make([]jit.Operation, len(items))
	for i, it := range items {
		ops[i] = it.rec.Op
	}
	q.log.Debug().Str("nsg", ops[0].NSG).Int("operations", len(ops)).Msg("operations delivered")
	q.settle(items, q.apply(ops))
}

func (q *Queue) opLog(it *item) zerolog.Logger {
	op := it.rec.Op
	return q.log.With().Str("op", op.ID).Str("kind", op.Kind).Str("request", op.RequestID).
		Int("grant", op.Grant).Str("nsg", op.NSG).Int("attempt", it.rec.Attempts+1).Logger()
}

// settle records the outcome of one delivery: finished operations leave
// the file, failed ones are scheduled again after their backoff or, out of
// attempts, move to the dead letters, all in one transaction.
//
// The commit runs without q.mu, so that settles of different NSGs share a
// commit and Enqueue and the dispatcher are not held up by it. The items
// stay in q.running until it is done.
func (q *Queue) settle(items []*item, errs []error) {
	type outcome int
	const (
		done outcome = iota
		retry
		dead
	)
	outcomes := make([]outcome, len(items))
	dls := make([]DeadLetter, len(items))
	recs := make([]record, len(items))
	q.mu.Lock()
	now := q.opt.Now()
	for i, it := range items {
		err := errs[i]
		recs[i] = it.rec
		switch {
		case err == nil:
			outcomes[i] = done
		case it.rec.Attempts+1 >= q.opt.MaxAttempts:
			outcomes[i] = dead
			dls[i] = DeadLetter{Ticket: it.rec.Op.ID, Op: it.rec.Op, Attempts: it.rec.Attempts + 1,
				LastError: err.Error(), DeadAt: now.UTC()}
		default:
			outcomes[i] = retry
			recs[i].Attempts++
			recs[i].LastError = err.Error()
			recs[i].Due = now.Add(q.backoff(recs[i].Attempts))
		}
	}
	q.mu.Unlock()
	txErr := q.db.Batch(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketOps)
		for i, it := range items {
			switch outcomes[i] {
			case done:
				if err := removeRecord(tx, it.seq); err != nil {
					return err
				}
			case retry:
				if err := putRecord(b, it.seq, recs[i]); err != nil {
					return err
				}
			case dead:
				if err := removeRecord(tx, it.seq); err != nil {
					return err
				}
				data, err := json.Marshal(dls[i])
				if err != nil {
					return err
				}
				if err := tx.Bucket(bucketDead).Put(seqKey(it.seq), data); err != nil {
					return err
				}
			}
		}
		return nil
	})
	q.mu.Lock()
	defer q.mu.Unlock()
	defer q.signal()
	q.deliveries--
	q.waiting.release(items[0].nsg)
	for i, it := range items {
		delete(q.running, it.seq)
		log := q.opLog(it)
		switch outcomes[i] {
		case done:
			if txErr != nil {
				// It stays in the file and runs again after a restart: at least once.
				log.Error().Err(txErr).Msg("could not remove finished operation")
			}
		case retry:
			if txErr != nil {
				log.Error().Err(txErr).Msg("could not record failed attempt")
			}
			it.rec = recs[i]
			q.waiting.add(it)
			log.Warn().Err(errs[i]).Time("retry_at", it.rec.Due).Msg("operation failed; will retry")
		case dead:
			if txErr != nil {
				log.Error().Err(txErr).Msg("could not move operation to dead letters")
			}
			log.Error().Err(errs[i]).Int("attempts", dls[i].Attempts).Msg("operation failed too often; moved to dead letters")
		}
	}
}

// apply calls the worker, turning a panic into an error so that one bad
// operation cannot take the process down; a panic or an answer of the
// wrong length fails every operation.
func (q *Queue) apply(ops []jit.Operation) (errs []error) {
	fail := func(err error) []error {
		errs := make([]error, len(ops))
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	defer func() {
		if p := recover(); p != nil {
			errs = fail(fmt.Errorf("worker panicked: %v", p))
		}
	}()
	errs = q.w.ApplyOperations(q.work, ops)
	if len(errs) != len(ops) {
		return fail(fmt.Errorf("worker answered %d results for %d operations", len(errs), len(ops)))
	}
	return errs
}

// backoff is the wait after the given number of failed attempts:
// InitialBackoff doubling up to MaxBackoff, with "equal jitter" (half fixed,
// half random) so that operations that failed together do not retry together.
func (q *Queue) backoff(attempts int) time.Duration {
	d := q.opt.InitialBackoff
	for i := 1; i < attempts && d < q.opt.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, q.opt.MaxBackoff)
	return d/2 + rand.N(d/2+1)
}

// removeRecord deletes an operation and its ID entry, if the entry still
// points at it (a later Enqueue of the same ID may own it by now).
func removeRecord(tx *bbolt.Tx, seq uint64) error {
	b, ids := tx.Bucket(bucketOps), tx.Bucket(bucketOpIDs)
	key := seqKey(seq)
	v := b.Get(key)
	if v == nil {
		return nil
	}
	var rec record
	if err := json.Unmarshal(v, &rec); err != nil {
		return fmt.Errorf("decode queued operation %d: %w", seq, err)
	}
	if owner := ids.Get([]byte(rec.Op.ID)); owner != nil && binary.BigEndian.Uint64(owner) == seq {
		if err := ids.Delete([]byte(rec.Op.ID)); err != nil {
			return err
		}
	}
	return b.Delete(key)
}

func putRecord(b *bbolt.Bucket, seq uint64, rec record) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode queued operation: %w", err)
	}
	return b.Put(seqKey(seq), data)
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }
