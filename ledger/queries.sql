-- Named queries of the ledger. Each block starts with `-- name: <name>`; `ledger.queries`
-- loads them. `$1` of the reading queries is an event id, or NULL for every event.
-- `events`, `active_bookings` and `waitlist` are read side by side through cursors and merged
-- by event id (ledger.state): all three sort event ids bytewise (COLLATE "C"), as Python does.

-- name: apply_batch
SELECT stream_id, outcome FROM ledger_apply($1, $2, $3, $4, $5, $6, $7, $8, $9, $10);

-- name: ledger_is_empty
SELECT NOT EXISTS (SELECT 1 FROM ledger_entries);

-- name: events
SELECT event_id, total_tickets, last_seq, waitlist_limit
  FROM events
 WHERE $1::text IS NULL OR event_id = $1
 ORDER BY event_id COLLATE "C";

-- name: active_bookings
SELECT event_id, user_id, booking_id
  FROM bookings
 WHERE ($1::text IS NULL OR event_id = $1) AND cancelled_seq IS NULL
 ORDER BY event_id COLLATE "C", booked_seq;

-- name: waitlist
SELECT event_id, user_id, seq
  FROM waitlist
 WHERE $1::text IS NULL OR event_id = $1
 ORDER BY event_id COLLATE "C", seq;

-- name: journal_extent
SELECT event_id, count(*) AS entries, min(seq) AS first, max(seq) AS last
  FROM ledger_entries
 WHERE $1::text IS NULL OR event_id = $1
 GROUP BY event_id;

-- name: journal_gaps
SELECT s AS seq
  FROM generate_series(1, $2::bigint) AS s
 WHERE NOT EXISTS (SELECT 1 FROM ledger_entries e WHERE e.event_id = $1 AND e.seq = s)
 ORDER BY s
 LIMIT $3;

-- name: dead_letter
INSERT INTO dead_letters (stream, stream_id, event_id, seq, reason, detail, fields, writer)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8)
ON CONFLICT (stream, stream_id) DO NOTHING;

-- name: frozen_events
SELECT event_id, stream_id
  FROM dead_letters
 WHERE resolved_at IS NULL AND reason <> 'held' AND event_id IS NOT NULL;

-- name: unresolved_dead_letters
SELECT stream, stream_id, event_id, seq, reason, detail, quarantined_at
  FROM dead_letters
 WHERE resolved_at IS NULL AND reason <> 'held'
   AND ($1::text IS NULL OR event_id = $1)
 ORDER BY quarantined_at, id;

-- name: held_counts
SELECT event_id, count(*) AS held
  FROM dead_letters
 WHERE resolved_at IS NULL AND reason = 'held' AND ($1::text IS NULL OR event_id = $1)
 GROUP BY event_id;

-- name: raise_outbox_mark
INSERT INTO outbox_marks AS m (stream, last_ms, last_n)
VALUES ($1, $2, $3)
ON CONFLICT (stream) DO UPDATE
   SET last_ms = excluded.last_ms, last_n = excluded.last_n, updated_at = now()
 WHERE (excluded.last_ms, excluded.last_n) > (m.last_ms, m.last_n);

-- name: outbox_mark
SELECT last_ms, last_n FROM outbox_marks WHERE stream = $1;

-- name: outbox_marks
SELECT stream, last_ms, last_n FROM outbox_marks;
