#!/usr/bin/env node
// Service Bus test double: an AMQP 1.0 server (on rhea) that speaks enough of
// Azure Service Bus's dialect for the real Go client (azservicebus v1.11.0,
// connection string with UseDevelopmentEmulator=true) to send, schedule,
// cancel and receive messages, with or without sessions. Microsoft's
// emulator needs Docker,
// which the test machines lack; this is test tooling only, never shipped.
//
// Supported: SASL ANONYMOUS, without TLS and, given a certificate, also with
// TLS (as a namespace reached by its name and an Entra ID token is); CBS
// put-token (always accepted; its type and audience are recorded);
// queues created on first use without sessions, or beforehand with
// PUT /queues/NAME {"requiresSession": true} (as in Service Bus, a queue's
// kind is fixed: a session queue refuses messages without a session id and
// non-session receivers, a queue without sessions refuses session
// receivers); sends (single and batched, format 0x80013700); duplicate
// detection by message-id; the management operations schedule-message,
// cancel-scheduled-message, renew-session-lock, get/set-session-state,
// renew-lock, update-disposition; receivers of a queue without sessions
// (every message, in queue order, to whichever link has credit); session
// receivers (a named session, or the next free one, waiting up to the
// client's com.microsoft:timeout); peek-lock dispositions on the link
// (accepted = complete, modified = abandon, released, rejected = dead-letter).
// Not supported: topics/subscriptions, deferral, peek, TTL/expiry, lock
// expiry (locks last until settled or the link goes), unless a fault below
// takes them.
//
// Faults, for fault tests, all off by default: a share of the messages
// taken in is lost (the sender hears it was accepted; a scheduled one gets
// its sequence number), a share is taken in twice (two messages, each
// delivered, settled and counted on its own), and a share of deliveries
// lose their lock while the receiver works on them: the message is
// available again with its delivery count one higher (dead-lettered when
// that reaches the maximum delivery count), and the receiver's settlement
// is refused with com.microsoft:message-lock-lost (410 on the management
// link). Set at start with the flags below or at any time with
// PUT /faults {"dropRate","duplicateRate","lockLossRate","lockLossAfterMs",
// "maxDeliveryCount","seed"}; the draws come from a seeded generator.
//
// Usage: node server.js [--amqp-port N] [--http-port M] [--max-delivery-count K]
//        [--tls-cert FILE --tls-key FILE [--amqps-port P]]
//        [--drop-rate R] [--duplicate-rate R] [--lock-loss-rate R]
//        [--lock-loss-after-ms MS] [--seed N]
// (0 = any free port). Prints one line "READY amqp=PORT http=PORT amqps=PORT"
// (amqps=0 without TLS), then logs
// to stderr when SB_DOUBLE_DEBUG is set. Exits on SIGTERM, and when its stdin
// is a pipe that closes, so a test harness that dies leaves no orphan behind.
'use strict';

const fs = require('fs');
const http = require('http');
const crypto = require('crypto');
const rhea = require('rhea');

const types = rhea.types;
const amqpMessage = rhea.message;

// rhea hands a decoded message to the application and keeps no bytes; the
// double needs them to store a message unchanged, so decode remembers them.
const decode = amqpMessage.decode;
amqpMessage.decode = function (buf) {
  const m = decode(buf);
  Object.defineProperty(m, 'sbRaw', { value: buf, enumerable: false });
  return m;
};

function parseArgs(argv) {
  const opts = {
    amqpPort: 0, httpPort: 0, amqpsPort: 0, maxDeliveryCount: 10, dupWindowMs: 10 * 60 * 1000,
    dropRate: 0, duplicateRate: 0, lockLossRate: 0, lockLossAfterMs: 1000, seed: 1,
  };
  for (let i = 2; i < argv.length; i++) {
    const next = () => Number(argv[++i]);
    switch (argv[i]) {
      case '--tls-cert': opts.tlsCert = argv[++i]; break;
      case '--tls-key': opts.tlsKey = argv[++i]; break;
      case '--amqps-port': opts.amqpsPort = next(); break;
      case '--amqp-port': opts.amqpPort = next(); break;
      case '--http-port': opts.httpPort = next(); break;
      case '--max-delivery-count': opts.maxDeliveryCount = next(); break;
      case '--dup-window-ms': opts.dupWindowMs = next(); break;
      case '--drop-rate': opts.dropRate = next(); break;
      case '--duplicate-rate': opts.duplicateRate = next(); break;
      case '--lock-loss-rate': opts.lockLossRate = next(); break;
      case '--lock-loss-after-ms': opts.lockLossAfterMs = next(); break;
      case '--seed': opts.seed = next(); break;
      default:
        process.stderr.write(`unknown argument ${argv[i]}\n`);
        process.exit(2);
    }
  }
  return opts;
}

const opts = parseArgs(process.argv);

// mulberry32: a small seeded generator, so that a fault run can be replayed
// as far as timing allows.
function seeded(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
let random = seeded(opts.seed);
const chance = (rate) => rate > 0 && random() < rate;
// Lock tokens (hex) whose lock a fault took: settling them is refused.
const lostLocks = new Set();
const log = (...args) => { if (process.env.SB_DOUBLE_DEBUG) console.error('[sb-double]', ...args); };

// Section descriptors of an AMQP message (numeric and symbolic forms).
const SECTION = { header: 0x70, deliveryAnnotations: 0x71, messageAnnotations: 0x72, properties: 0x73, data: 0x75 };
const SECTION_NAMES = {
  'amqp:header:list': 0x70, 'amqp:delivery-annotations:map': 0x71, 'amqp:message-annotations:map': 0x72,
  'amqp:properties:list': 0x73, 'amqp:data:binary': 0x75,
};
const BATCH_FORMAT = 0x80013700;
const SESSION_FILTER = 'com.microsoft:session-filter';
const SESSION_FILTER_CODE = 0x137000000C;
const LOCK_DURATION_MS = 60 * 1000;
// .NET ticks at the Unix epoch: the client reads com.microsoft:locked-until-utc in ticks.
const EPOCH_TICKS = 621355968000000000n;

// ---- broker state -------------------------------------------------------

const queues = new Map();

function queue(name) {
  let q = queues.get(name);
  if (!q) {
    q = {
      name,
      requiresSession: false,
      receivers: new Set(), // our sender links to receivers of a queue without sessions
      nextSeq: 1,
      active: [], // messages visible to receivers, in enqueue order; locked ones stay in place
      scheduled: new Map(), // seq -> message not yet visible
      seen: new Map(), // message-id -> {seq, at}: duplicate detection
      sessionLocks: new Map(), // session id -> our sender link that holds it
      sessionState: new Map(), // session id -> Buffer
      waiting: [], // accept-next-session links waiting for a free session
      counts: {
        sent: 0, scheduled: 0, completed: 0, abandoned: 0, released: 0, cancelled: 0, deadLettered: 0, duplicatesDropped: 0,
        dropped: 0, duplicated: 0, locksLost: 0,
      },
      deadLetters: [],
    };
    queues.set(name, q);
  }
  return q;
}

function sectionCode(s) {
  const d = s.descriptor && s.descriptor.value;
  return typeof d === 'string' ? SECTION_NAMES[d] : Number(d);
}

// parseMessage keeps a message's sections as rhea typed values so they go
// back to the client byte-for-byte; only header and annotations are rebuilt.
function parseMessage(buf) {
  const reader = new types.Reader(buf);
  const sections = [];
  const annotations = []; // [key string, typed value]
  let props = {};
  while (reader.remaining()) {
    const s = reader.read();
    const code = sectionCode(s);
    if (code === SECTION.messageAnnotations) {
      const items = s.value || [];
      for (let i = 0; i + 1 < items.length; i += 2) annotations.push([String(items[i].value), items[i + 1]]);
      continue;
    }
    if (code === SECTION.header || code === SECTION.deliveryAnnotations) continue;
    if (code === SECTION.properties) props = amqpMessage.decode(encodeSections([s]));
    sections.push(s);
  }
  return { sections, annotations, messageId: idString(props.message_id), sessionId: props.group_id };
}

function idString(id) {
  if (id === undefined || id === null) return undefined;
  return Buffer.isBuffer(id) ? id.toString('hex') : String(id);
}

function encodeSections(sections) {
  const w = new types.Writer();
  for (const s of sections) w.write(s);
  return w.toBuffer();
}

function annotationTime(m, key) {
  const found = m.annotations.find(([k]) => k === key);
  if (!found) return undefined;
  const v = found[1].value;
  return v instanceof Date ? v.getTime() : Number(v);
}

// accept takes a parsed message into the queue, now or at its scheduled
// time. It returns the sequence number; a duplicate gets its twin's.
function accept(q, parsed, scheduledAt) {
  const now = Date.now();
  if (parsed.messageId !== undefined) {
    const prev = q.seen.get(parsed.messageId);
    if (prev && now - prev.at < opts.dupWindowMs) {
      q.counts.duplicatesDropped++;
      log('duplicate dropped', q.name, parsed.messageId);
      return prev.seq;
    }
  }
  if (chance(opts.dropRate)) {
    // Lost on the way in: the id is still remembered, so a retry of the
    // send is taken for a duplicate and the loss stays a loss.
    const seq = q.nextSeq++;
    if (parsed.messageId !== undefined) q.seen.set(parsed.messageId, { seq, at: now });
    q.counts.dropped++;
    log('fault: dropped', q.name, parsed.messageId);
    return seq;
  }
  const twice = chance(opts.duplicateRate);
  const seq = enqueue(q, parsed, scheduledAt, now);
  if (parsed.messageId !== undefined) q.seen.set(parsed.messageId, { seq, at: now });
  if (twice) {
    enqueue(q, parsed, scheduledAt, now);
    q.counts.duplicated++;
    log('fault: taken in twice', q.name, parsed.messageId);
  }
  return seq;
}

// enqueue makes a message of a parsed one, visible now or scheduled.
function enqueue(q, parsed, scheduledAt, now) {
  const m = {
    seq: q.nextSeq++,
    messageId: parsed.messageId,
    sessionId: parsed.sessionId,
    sections: parsed.sections,
    annotations: parsed.annotations,
    scheduledAt,
    enqueuedAt: undefined,
    deliveryCount: 0,
    lock: undefined, // {token (16 bytes), link, delivery} while a receiver holds it
  };
  if (scheduledAt !== undefined && scheduledAt > now) {
    q.scheduled.set(m.seq, m);
    q.counts.scheduled++;
    armTimer();
  } else {
    m.enqueuedAt = now;
    q.active.push(m);
    q.counts.sent++;
  }
  return m.seq;
}

// One timer for all queues: it fires at the earliest scheduled time and
// moves due messages to the active list in (time, seq) order, so equal due
// times keep their scheduling order as in Service Bus.
let timer;
function armTimer() {
  clearTimeout(timer);
  let earliest = Infinity;
  for (const q of queues.values()) for (const m of q.scheduled.values()) earliest = Math.min(earliest, m.scheduledAt);
  if (earliest === Infinity) return;
  timer = setTimeout(activateDue, Math.max(0, earliest - Date.now()));
}

function activateDue() {
  // Node timers may fire a millisecond early; Date.now() decides.
  const now = Date.now();
  for (const q of queues.values()) {
    const due = [...q.scheduled.values()].filter((m) => m.scheduledAt <= now)
      .sort((a, b) => a.scheduledAt - b.scheduledAt || a.seq - b.seq);
    for (const m of due) {
      q.scheduled.delete(m.seq);
      m.enqueuedAt = now;
      q.active.push(m);
    }
    if (due.length) pump(q);
  }
  armTimer();
}

function removeActive(q, m) {
  const i = q.active.indexOf(m);
  if (i >= 0) q.active.splice(i, 1);
}

// ---- delivering to receivers ---------------------------------------------

function encodeForDelivery(m) {
  const ours = new Set(['x-opt-sequence-number', 'x-opt-enqueued-time', 'x-opt-locked-until', 'x-opt-lock-token', 'x-opt-enqueue-sequence-number']);
  const items = [];
  for (const [k, v] of m.annotations) if (!ours.has(k)) items.push(types.wrap_symbol(k), v);
  items.push(types.wrap_symbol('x-opt-sequence-number'), types.Long(m.seq));
  items.push(types.wrap_symbol('x-opt-enqueue-sequence-number'), types.Long(m.seq));
  items.push(types.wrap_symbol('x-opt-enqueued-time'), types.wrap_timestamp(m.enqueuedAt));
  items.push(types.wrap_symbol('x-opt-locked-until'), types.wrap_timestamp(Date.now() + LOCK_DURATION_MS));
  const header = amqpMessage.header({ delivery_count: m.deliveryCount }).described();
  const annotations = types.described(types.wrap_ulong(SECTION.messageAnnotations), types.Map32(items));
  return encodeSections([header, annotations, ...m.sections]);
}

// pump sends each session receiver with credit the next unlocked message of
// its session, and each receiver of a queue without sessions the next
// unlocked message, in queue order.
function pump(q) {
  for (const [sessionId, link] of q.sessionLocks) {
    while (hasCredit(link)) {
      const m = q.active.find((x) => x.sessionId === sessionId && !x.lock);
      if (!m) break;
      deliver(q, link, m);
    }
  }
  for (const link of q.receivers) {
    while (hasCredit(link)) {
      const m = q.active.find((x) => !x.lock);
      if (!m) break;
      deliver(q, link, m);
    }
  }
  serveWaiting(q);
}

// hasCredit says whether the receiver has credit for one more message.
// rhea takes credit only when it transfers a delivery, later, so the
// deliveries handed to it and not yet transferred count too: otherwise one
// receiver with credit for one would get (and lock) every message.
function hasCredit(link) {
  if (link.sbSent === undefined) link.sbSent = link.delivery_count;
  return link.sendable() && link.credit - (link.sbSent - link.delivery_count) > 0;
}

function deliver(q, link, m) {
  link.sbSent = (link.sbSent === undefined ? link.delivery_count : link.sbSent) + 1;
  // The delivery tag is the lock token, as Service Bus does (16 bytes).
  const token = crypto.randomBytes(16);
  const delivery = link.send(encodeForDelivery(m), token, 0);
  m.lock = { token, link, delivery };
  delivery.sbMessage = m;
  log('delivered', q.name, m.sessionId, m.seq, 'count', m.deliveryCount);
  if (chance(opts.lockLossRate)) setTimeout(() => loseLock(q, m, token), random() * opts.lockLossAfterMs);
}

// loseLock takes a delivery's lock as an expired one goes: the message is
// available again (or dead-lettered) while its receiver still works on it.
function loseLock(q, m, token) {
  if (!m.lock || m.lock.token !== token) return; // settled or released meanwhile
  lostLocks.add(token.toString('hex'));
  m.lock.delivery.sbLockLost = true;
  m.lock = undefined;
  m.deliveryCount++;
  q.counts.locksLost++;
  log('fault: lock lost', q.name, m.seq, 'count', m.deliveryCount);
  if (m.deliveryCount >= opts.maxDeliveryCount) deadLetter(q, m, 'MaxDeliveryCountExceeded');
  pump(q);
}

function lockLost(tok) {
  if (!lostLocks.size) return false;
  const u = Buffer.isBuffer(tok) ? tok : Buffer.from(String(tok).replace(/-/g, ''), 'hex');
  for (const hex of lostLocks) if (lockTokenMatches(Buffer.from(hex, 'hex'), u)) return true;
  return false;
}

const LOCK_LOST = 'com.microsoft:message-lock-lost';
const LOCK_LOST_TEXT = 'The lock supplied is invalid. Either the lock expired, or the message has already been removed from the queue.';

function lockedBy(q, link) {
  return q.active.filter((m) => m.lock && m.lock.link === link);
}

function settleMessage(q, m, outcome) {
  m.lock = undefined;
  switch (outcome) {
    case 'complete':
      removeActive(q, m);
      q.counts.completed++;
      break;
    case 'abandon':
      m.deliveryCount++;
      q.counts.abandoned++;
      if (m.deliveryCount >= opts.maxDeliveryCount) deadLetter(q, m, 'MaxDeliveryCountExceeded');
      break;
    case 'release':
      q.counts.released++;
      break;
    case 'deadletter':
      deadLetter(q, m, 'DeadLetteredByReceiver');
      break;
  }
  pump(q);
}

function deadLetter(q, m, reason) {
  removeActive(q, m);
  q.counts.deadLettered++;
  q.deadLetters.push({ seq: m.seq, messageId: m.messageId, sessionId: m.sessionId, reason });
}

// A receiver link that goes away gives up its session lock; the messages it
// held become available again with their delivery count unchanged.
function releaseLink(link) {
  const q = link.sbQueue;
  if (!q) return;
  link.sbQueue = undefined;
  q.receivers.delete(link);
  for (const m of lockedBy(q, link)) m.lock = undefined;
  if (link.sbSession !== undefined && q.sessionLocks.get(link.sbSession) === link) q.sessionLocks.delete(link.sbSession);
  q.waiting = q.waiting.filter((w) => w.link !== link);
  pump(q);
}

// A session is free when no receiver holds it; the next one to hand out is
// the free session of the oldest available message.
function nextFreeSession(q) {
  for (const m of q.active) {
    if (!m.lock && m.sessionId !== undefined && !q.sessionLocks.has(m.sessionId)) return m.sessionId;
  }
  return undefined;
}

function serveWaiting(q) {
  while (q.waiting.length) {
    const sid = nextFreeSession(q);
    if (sid === undefined) return;
    const w = q.waiting.shift();
    clearTimeout(w.timer);
    grantSession(q, w.link, sid);
  }
}

function grantSession(q, link, sessionId) {
  link.sbQueue = q;
  link.sbSession = sessionId;
  q.sessionLocks.set(sessionId, link);
  const source = { address: q.name, filter: {} };
  source.filter[SESSION_FILTER] = types.wrap_described(sessionId, SESSION_FILTER_CODE);
  link.set_source(source);
  link.local.attach.properties = { 'com.microsoft:locked-until-utc': types.Long(lockedUntilTicks()) };
  link.open();
  log('session granted', q.name, sessionId);
}

function lockedUntilTicks() {
  return Number(BigInt(Date.now() + LOCK_DURATION_MS) * 10000n + EPOCH_TICKS);
}

// refuseAttach answers an attach with no terminus and then detaches with an
// error: that is how Service Bus says "no" to a link (go-amqp waits for it).
function refuseAttach(link, condition, description) {
  link.local.attach.source = null;
  link.local.attach.target = null;
  if (!link.state.local_open) link.open();
  link.close({ condition, description });
}

// ---- management ($cbs and <queue>/$management) ---------------------------

function reply(link, request, status, body, description, condition) {
  const replyTo = request.reply_to;
  const sender = link.connection.sbReplyLinks && link.connection.sbReplyLinks.get(replyTo);
  if (!sender) {
    log('no reply link for', replyTo);
    return;
  }
  sender.send({
    correlation_id: request.message_id,
    application_properties: {
      'status-code': types.wrap_int(status),
      'statusCode': types.wrap_int(status),
      'status-description': description || (status === 200 ? 'OK' : 'error'),
      ...(condition ? { 'error-condition': types.wrap_symbol(condition) } : {}),
    },
    body: body === undefined ? null : body,
  });
}

function handleManagement(link, address, request) {
  const props = request.application_properties || {};
  const op = props.operation;
  if (address === '$cbs') {
    // Any token is good: the double checks no credentials. What kind of
    // token came, for which audience, is kept (never the token itself), and
    // for a JWT the audience it was issued for.
    const seen = { type: String(props.type || ''), name: String(props.name || '') };
    if (seen.type === 'jwt' && typeof request.body === 'string') {
      try {
        seen.aud = JSON.parse(Buffer.from(request.body.split('.')[1], 'base64url').toString()).aud;
      } catch { /* not a JWT: no audience */ }
    }
    cbs.push(seen);
    reply(link, request, 200);
    return;
  }
  const q = queue(address.replace(/\/\$management$/, ''));
  const body = request.body || {};
  log('management', q.name, op);
  switch (op) {
    case 'com.microsoft:schedule-message': {
      const seqs = [];
      for (const entry of body.messages || []) {
        const parsed = parseMessage(entry.message);
        if (parsed.sessionId === undefined && entry['session-id'] !== undefined) parsed.sessionId = entry['session-id'];
        if (parsed.sessionId === undefined && q.requiresSession) return reply(link, request, 400, undefined, 'session-enabled queue: a message needs a session id');
        const at = annotationTime(parsed, 'x-opt-scheduled-enqueue-time');
        seqs.push(accept(q, parsed, at === undefined ? Date.now() : at));
      }
      pump(q);
      return reply(link, request, 200, { 'sequence-numbers': types.wrap_array(seqs, 0x81) });
    }
    case 'com.microsoft:cancel-scheduled-message': {
      for (const raw of body['sequence-numbers'] || []) {
        const seq = Number(raw);
        // Cancelling what is not scheduled (any more) is not an error here.
        if (q.scheduled.delete(seq)) q.counts.cancelled++;
      }
      armTimer();
      return reply(link, request, 200);
    }
    case 'com.microsoft:renew-session-lock':
      return reply(link, request, 200, { expiration: new Date(Date.now() + LOCK_DURATION_MS) });
    case 'com.microsoft:get-session-state':
      return reply(link, request, 200, { 'session-state': q.sessionState.get(body['session-id']) || null });
    case 'com.microsoft:set-session-state':
      q.sessionState.set(body['session-id'], body['session-state']);
      return reply(link, request, 200);
    case 'com.microsoft:renew-lock': {
      if ((body['lock-tokens'] || []).some(lockLost)) return reply(link, request, 410, undefined, LOCK_LOST_TEXT, LOCK_LOST);
      const n = (body['lock-tokens'] || []).length;
      const exp = Array.from({ length: n }, () => types.wrap_timestamp(Date.now() + LOCK_DURATION_MS));
      return reply(link, request, 200, { expirations: types.wrap_array(exp.map((t) => t.value), 0x83) });
    }
    case 'com.microsoft:update-disposition': {
      const status = body['disposition-status'];
      const outcome = { completed: 'complete', abandoned: 'abandon', suspended: 'deadletter' }[status];
      if ((body['lock-tokens'] || []).some(lockLost)) return reply(link, request, 410, undefined, LOCK_LOST_TEXT, LOCK_LOST);
      for (const tok of body['lock-tokens'] || []) {
        const m = q.active.find((x) => x.lock && lockTokenMatches(x.lock.token, tok));
        if (m && outcome) settleMessage(q, m, outcome);
      }
      return reply(link, request, 200);
    }
    default:
      return reply(link, request, 501, undefined, `operation ${op} is not implemented by the test double`);
  }
}

// Lock tokens travel as the delivery tag in .NET GUID byte order and come
// back as AMQP uuids in RFC order; compare both ways.
function lockTokenMatches(tag, uuid) {
  const u = Buffer.isBuffer(uuid) ? uuid : Buffer.from(String(uuid).replace(/-/g, ''), 'hex');
  if (tag.equals(u)) return true;
  const swapped = Buffer.from(tag);
  [swapped[0], swapped[3]] = [swapped[3], swapped[0]];
  [swapped[1], swapped[2]] = [swapped[2], swapped[1]];
  [swapped[4], swapped[5]] = [swapped[5], swapped[4]];
  [swapped[6], swapped[7]] = [swapped[7], swapped[6]];
  return swapped.equals(u);
}

// ---- AMQP wiring ---------------------------------------------------------

const container = rhea.create_container({
  id: 'servicebus-double',
  autoaccept: false,
  autosettle: false,
  treat_modified_as_released: false,
  tcp_no_delay: true,
});
container.sasl_server_mechanisms.enable_anonymous();

function isManagement(address) {
  return address === '$cbs' || /\/\$management$/.test(address || '');
}

// Attach replies echo the client's terminus and settle modes: go-amqp
// refuses a link whose settle modes differ from what it asked for.
function echoAttach(link) {
  const remote = link.remote.attach;
  link.local.attach.snd_settle_mode = remote.snd_settle_mode;
  link.local.attach.rcv_settle_mode = remote.rcv_settle_mode;
  // toJSON gives the terminus's fields as a plain object; handing rhea the
  // decoded terminus itself would copy its raw field list too.
  if (remote.source) link.set_source(remote.source.toJSON());
  if (remote.target) link.set_target(remote.target.toJSON());
}

// The client sends to a queue or a management address.
container.on('receiver_open', (context) => {
  const link = context.receiver;
  echoAttach(link);
  link.local.attach.max_message_size = 1024 * 1024;
  const address = link.remote.attach.target && link.remote.attach.target.address;
  link.sbAddress = address;
  if (!isManagement(address)) queue(address);
});

container.on('message', (context) => {
  const link = context.receiver;
  const address = link.sbAddress;
  const delivery = context.delivery;
  try {
    if (isManagement(address)) {
      handleManagement(link, address, context.message);
    } else {
      const q = queue(address);
      const raw = context.format === undefined ? context.message.sbRaw : context.message;
      const buffers = [];
      if (context.format === BATCH_FORMAT) {
        // A batch is an envelope whose data sections are whole messages.
        const reader = new types.Reader(raw);
        while (reader.remaining()) {
          const s = reader.read();
          if (sectionCode(s) === SECTION.data) buffers.push(s.value);
        }
      } else {
        buffers.push(raw);
      }
      for (const b of buffers) {
        const parsed = parseMessage(b);
        if (parsed.sessionId === undefined && q.requiresSession) throw new Error('session-enabled queue: a message needs a session id');
        accept(q, parsed, annotationTime(parsed, 'x-opt-scheduled-enqueue-time'));
      }
      pump(q);
    }
    delivery.update(true, amqpMessage.accepted().described());
  } catch (err) {
    log('rejecting', err.message);
    delivery.update(true, amqpMessage.rejected({ error: { condition: 'amqp:invalid-field', description: err.message } }).described());
  }
});

// The client receives: a management reply link, a session receiver, or a
// receiver of a queue without sessions.
container.on('sender_open', (context) => {
  const link = context.sender;
  echoAttach(link);
  const remote = link.remote.attach;
  const address = remote.source && remote.source.address;
  if (isManagement(address)) {
    const replyTo = remote.target && remote.target.address;
    const conn = link.connection;
    conn.sbReplyLinks = conn.sbReplyLinks || new Map();
    conn.sbReplyLinks.set(replyTo, link);
    link.sbReplyTo = replyTo;
    return;
  }
  const q = queue(address);
  const filter = remote.source && remote.source.filter;
  const sessionful = Boolean(filter && SESSION_FILTER in filter);
  // Service Bus's own words for a receiver of the wrong kind.
  if (sessionful && !q.requiresSession) {
    refuseAttach(link, 'amqp:not-allowed', 'A sessionful message receiver cannot be created on an entity that does not require sessions.');
    return;
  }
  if (!sessionful && q.requiresSession) {
    refuseAttach(link, 'amqp:not-allowed', 'It is not possible for an entity that requires sessions to create a non-sessionful message receiver.');
    return;
  }
  if (!sessionful) {
    link.sbQueue = q;
    q.receivers.add(link);
    log('receiver attached', q.name);
    return;
  }
  const f = filter[SESSION_FILTER];
  const wanted = f && typeof f === 'object' && 'value' in f ? f.value : f;
  // rhea opened the link already; hold the attach reply back until a
  // session is granted (Service Bus answers accept-next-session that way).
  link.state.local_open = false;
  link.state.open_requests = 0;
  if (wanted !== null && wanted !== undefined) {
    if (q.sessionLocks.has(wanted)) {
      refuseAttach(link, 'com.microsoft:session-cannot-be-locked', `session ${wanted} is locked by another receiver`);
    } else {
      grantSession(q, link, String(wanted));
    }
    return;
  }
  const sid = nextFreeSession(q);
  if (sid !== undefined) {
    grantSession(q, link, sid);
    return;
  }
  const props = remote.properties || {};
  const timeoutMs = Number(props['com.microsoft:timeout'] || 60000);
  const w = { link };
  w.timer = setTimeout(() => {
    q.waiting = q.waiting.filter((x) => x !== w);
    refuseAttach(link, 'com.microsoft:timeout', 'no session available');
  }, timeoutMs);
  q.waiting.push(w);
});

container.on('sendable', (context) => {
  if (context.sender.sbQueue) pump(context.sender.sbQueue);
});

function onOutcome(outcome) {
  return (context) => {
    const d = context.delivery;
    const m = d.sbMessage;
    const link = context.sender;
    if (d.sbLockLost) {
      // Service Bus refuses a settlement whose lock has gone.
      d.update(true, amqpMessage.rejected({ error: { condition: LOCK_LOST, description: LOCK_LOST_TEXT } }).described());
      d.remote_settled = true;
      return;
    }
    if (!m || !m.lock || m.lock.delivery !== d) return;
    let kind = outcome;
    if (outcome === 'modified') kind = d.remote_state && d.remote_state.undeliverable_here ? 'deadletter' : 'abandon';
    // Receivers ask for settle mode "second": the broker settles, echoing
    // the outcome. Marking it remotely settled lets rhea forget it.
    const state = {
      complete: () => amqpMessage.accepted(),
      abandon: () => amqpMessage.modified({ delivery_failed: true }),
      release: () => amqpMessage.released(),
      deadletter: () => amqpMessage.rejected({}),
    }[kind]();
    d.update(true, state.described());
    d.remote_settled = true;
    settleMessage(link.sbQueue || queueOf(m), m, kind);
  };
}
container.on('accepted', onOutcome('complete'));
container.on('modified', onOutcome('modified'));
container.on('released', onOutcome('release'));
container.on('rejected', onOutcome('deadletter'));

function queueOf(m) {
  for (const q of queues.values()) if (q.active.includes(m)) return q;
  return queue('unknown');
}

function forgetLink(context) {
  const link = context.sender || context.receiver;
  if (!link) return;
  if (link.sbReplyTo && link.connection.sbReplyLinks) link.connection.sbReplyLinks.delete(link.sbReplyTo);
  if (link.sbQueue) releaseLink(link);
  for (const q of queues.values()) q.waiting = q.waiting.filter((w) => { if (w.link === link) clearTimeout(w.timer); return w.link !== link; });
}
container.on('sender_close', forgetLink);
container.on('receiver_close', forgetLink);
container.on('sender_error', () => {});
container.on('receiver_error', () => {});

function forgetConnection(context) {
  const conn = context.connection;
  for (const q of queues.values()) {
    for (const [, link] of [...q.sessionLocks]) if (link.connection === conn) releaseLink(link);
    for (const link of [...q.receivers]) if (link.connection === conn) releaseLink(link);
    q.waiting = q.waiting.filter((w) => { if (w.link.connection === conn) clearTimeout(w.timer); return w.link.connection !== conn; });
  }
}
container.on('disconnected', forgetConnection);
container.on('connection_close', forgetConnection);
container.on('error', (err) => log('error', err && err.message));

// ---- HTTP admin ----------------------------------------------------------

const cbs = []; // put-token requests seen: {type, name, aud}

// faultsJSON is the faults in force, as PUT /faults takes them.
function faultsJSON() {
  const { dropRate, duplicateRate, lockLossRate, lockLossAfterMs, maxDeliveryCount, seed } = opts;
  return { dropRate, duplicateRate, lockLossRate, lockLossAfterMs, maxDeliveryCount, seed };
}

function stateJSON() {
  const out = { queues: {}, cbs, faults: faultsJSON() };
  for (const q of queues.values()) {
    out.queues[q.name] = {
      requiresSession: q.requiresSession,
      active: q.active.map((m) => ({
        seq: m.seq, messageId: m.messageId, sessionId: m.sessionId, deliveryCount: m.deliveryCount,
        locked: Boolean(m.lock), enqueuedTime: new Date(m.enqueuedAt).toISOString(),
      })),
      scheduled: [...q.scheduled.values()].map((m) => ({
        seq: m.seq, messageId: m.messageId, sessionId: m.sessionId, scheduledTime: new Date(m.scheduledAt).toISOString(),
      })),
      lockedSessions: [...q.sessionLocks.keys()],
      deadLetters: q.deadLetters,
      counts: q.counts,
    };
  }
  return out;
}

const admin = http.createServer((req, res) => {
  const send = (status, obj) => {
    res.writeHead(status, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify(obj));
  };
  if (req.method === 'GET' && req.url === '/state') return send(200, stateJSON());
  const put = req.method === 'PUT' && /^\/queues\/([^/?]+)$/.exec(req.url);
  if (put) {
    // Creates a queue of the kind asked for. A queue's kind cannot change
    // once it is in use, as in Service Bus (which refuses any change).
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      let props;
      try {
        props = JSON.parse(body || '{}');
      } catch {
        return send(400, { error: 'the body is not JSON' });
      }
      const name = decodeURIComponent(put[1]);
      const fresh = !queues.has(name);
      const q = queue(name);
      const want = Boolean(props.requiresSession);
      if (q.requiresSession !== want) {
        const used = q.active.length || q.scheduled.size || q.receivers.size || q.sessionLocks.size || q.waiting.length;
        if (!fresh && used) return send(409, { error: `queue ${name} is in use: requiresSession cannot change` });
        q.requiresSession = want;
      }
      return send(200, { name, requiresSession: q.requiresSession });
    });
    return undefined;
  }
  if (req.method === 'PUT' && req.url === '/faults') {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      let f;
      try {
        f = JSON.parse(body || '{}');
      } catch {
        return send(400, { error: 'the body is not JSON' });
      }
      for (const k of ['dropRate', 'duplicateRate', 'lockLossRate']) {
        if (k in f && !(typeof f[k] === 'number' && f[k] >= 0 && f[k] <= 1)) return send(400, { error: `${k} must be a number from 0 to 1` });
      }
      for (const k of ['lockLossAfterMs', 'maxDeliveryCount', 'seed']) {
        if (k in f && !(Number.isInteger(f[k]) && f[k] >= (k === 'maxDeliveryCount' ? 1 : 0))) return send(400, { error: `${k} must be a whole number` });
      }
      for (const k of Object.keys(faultsJSON())) if (k in f) opts[k] = f[k];
      if ('seed' in f) random = seeded(opts.seed);
      return send(200, faultsJSON());
    });
    return undefined;
  }
  if (req.method === 'POST' && req.url === '/reset') {
    // Drops messages and counters; links stay, so a reset between tests
    // needs no reconnect. Locked sessions are kept with their links.
    for (const q of queues.values()) {
      q.active = []; q.scheduled.clear(); q.seen.clear(); q.deadLetters = [];
      for (const k of Object.keys(q.counts)) q.counts[k] = 0;
    }
    armTimer();
    return send(200, {});
  }
  return send(404, { error: 'GET /state, POST /reset, PUT /queues/NAME or PUT /faults' });
});

// ---- start and stop ------------------------------------------------------

const amqpServer = container.listen({ port: opts.amqpPort, host: '127.0.0.1' });
let amqpsServer;
if (opts.tlsCert) {
  amqpsServer = container.listen({
    transport: 'tls', port: opts.amqpsPort, host: '127.0.0.1',
    cert: fs.readFileSync(opts.tlsCert), key: fs.readFileSync(opts.tlsKey),
  });
  amqpsServer.on('error', (err) => { console.error('amqps listen:', err.message); process.exit(1); });
}
const listening = (server) => new Promise((resolve) => server.on('listening', resolve));
Promise.all([amqpServer, amqpsServer].filter(Boolean).map(listening)).then(() => {
  admin.listen(opts.httpPort, '127.0.0.1', () => {
    const amqps = amqpsServer ? amqpsServer.address().port : 0;
    process.stdout.write(`READY amqp=${amqpServer.address().port} http=${admin.address().port} amqps=${amqps}\n`);
  });
});
amqpServer.on('error', (err) => { console.error('amqp listen:', err.message); process.exit(1); });
admin.on('error', (err) => { console.error('http listen:', err.message); process.exit(1); });

// Only a pipe means a parent that watches us: a terminal or /dev/null (a
// background job started by hand) must not stop the double.
if (require('fs').fstatSync(0).isFIFO()) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('close', () => process.exit(0));
  process.stdin.resume();
}
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
