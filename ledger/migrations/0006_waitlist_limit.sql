-- Capped waiting lists: an event may be opened with a waiting-list limit, and its init record
-- (format 2, `ledger/records.py`) may name the administrator who opened it. Both go into the
-- journal (ledger_entries, init rows only) and the events projection, from which restore puts
-- the limit back into Redis. Rows written before this migration have neither: NULL, as for an
-- event opened without a limit by nobody known. ledger_apply takes the two new arrays and
-- counts them as content (a redelivery with another limit is a conflict, not a duplicate).
ALTER TABLE events
    ADD COLUMN waitlist_limit integer CHECK (waitlist_limit BETWEEN 0 AND 10000000),
    ADD COLUMN opened_by text CHECK (octet_length(opened_by) BETWEEN 1 AND 128);
COMMENT ON COLUMN events.waitlist_limit IS
    'How many users may wait at most once the event is sold out; NULL: no limit.';
COMMENT ON COLUMN events.opened_by IS
    'The administrator who opened the event, as the API identified them; NULL: not known.';

ALTER TABLE ledger_entries
    ADD COLUMN waitlist_limit integer CHECK (waitlist_limit BETWEEN 0 AND 10000000),
    ADD COLUMN opened_by text CHECK (octet_length(opened_by) BETWEEN 1 AND 128),
    ADD CONSTRAINT ledger_entries_init_only
        CHECK (op = 'init' OR (waitlist_limit IS NULL AND opened_by IS NULL));
COMMENT ON COLUMN ledger_entries.waitlist_limit IS
    'init only: the waiting-list limit the event was opened with (record field limit); NULL: none.';
COMMENT ON COLUMN ledger_entries.opened_by IS
    'init only: the administrator who opened the event (record field by); NULL: not known.';

DROP FUNCTION ledger_apply(text[], bigint[], text[], text[], text[], integer[], text[], smallint[]);

CREATE FUNCTION ledger_apply(
    p_event   text[],
    p_seq     bigint[],
    p_op      text[],
    p_user    text[],
    p_booking text[],
    p_total   integer[],
    p_stream  text[],
    p_format  smallint[],
    p_limit   integer[],
    p_by      text[]
) RETURNS TABLE (stream_id text, outcome text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    -- Named for this version of the function: a session that ran an older one keeps that
    -- one's table, of another shape, until it ends.
    CREATE TEMP TABLE IF NOT EXISTS ledger_batch_6 (
        event_id text, seq bigint, op text, user_id text, booking_id text,
        total_tickets integer, stream_id text, format smallint, waitlist_limit integer,
        opened_by text, recorded_at timestamptz, outcome text
    ) ON COMMIT DELETE ROWS;
    DELETE FROM ledger_batch_6;  -- a second call in one transaction starts afresh

    -- Concurrent batches touching the same events queue here, always in the same order.
    PERFORM 1 FROM events e
     WHERE e.event_id = ANY (p_event)
     ORDER BY e.event_id
       FOR UPDATE;

    INSERT INTO ledger_batch_6
    WITH input AS (
        SELECT DISTINCT ON (r.event_id, r.seq) r.*
          FROM unnest(p_event, p_seq, p_op, p_user, p_booking, p_total, p_stream, p_format,
                      p_limit, p_by)
               AS r(event_id, seq, op, user_id, booking_id, total_tickets, stream_id, format,
                    waitlist_limit, opened_by)
         ORDER BY r.event_id, r.seq, r.stream_id
    ), placed AS (
        SELECT i.*, coalesce(e.last_seq, 0) AS last_seq,
               row_number() OVER (PARTITION BY i.event_id, i.seq > coalesce(e.last_seq, 0)
                                  ORDER BY i.seq) AS nth
          FROM input i
          LEFT JOIN events e ON e.event_id = i.event_id
    )
    SELECT p.event_id, p.seq, p.op, p.user_id, p.booking_id, p.total_tickets, p.stream_id,
           p.format, p.waitlist_limit, p.opened_by,
           -- the stream entry id is "<milliseconds>-<n>": the time Redis made the change
           to_timestamp(split_part(p.stream_id, '-', 1)::bigint / 1000.0),
           CASE
               WHEN p.seq > p.last_seq THEN
                   CASE WHEN p.seq - p.last_seq = p.nth THEN 'applied' ELSE 'blocked' END
               WHEN j.seq IS NULL THEN 'duplicate'
               WHEN (j.op, j.user_id, j.booking_id, j.total_tickets, j.waitlist_limit,
                     j.opened_by)
                    IS NOT DISTINCT FROM (p.op, p.user_id, p.booking_id, p.total_tickets,
                                          p.waitlist_limit, p.opened_by)
                   THEN 'duplicate'
               ELSE 'conflict'
           END
      FROM placed p
      LEFT JOIN ledger_entries j ON j.event_id = p.event_id AND j.seq = p.seq;

    INSERT INTO ledger_entries AS j
           (event_id, seq, op, user_id, booking_id, total_tickets, stream_id, recorded_at,
            format, waitlist_limit, opened_by)
    SELECT b.event_id, b.seq, b.op, b.user_id, b.booking_id, b.total_tickets, b.stream_id,
           b.recorded_at, b.format, b.waitlist_limit, b.opened_by
      FROM ledger_batch_6 b
     WHERE b.outcome IN ('applied', 'duplicate')
    ON CONFLICT DO NOTHING;

    INSERT INTO events (event_id, total_tickets, last_seq, created_at, waitlist_limit,
                        opened_by)
    SELECT b.event_id, b.total_tickets, 1, b.recorded_at, b.waitlist_limit, b.opened_by
      FROM ledger_batch_6 b
     WHERE b.outcome = 'applied' AND b.op = 'init';

    INSERT INTO bookings (event_id, booking_id, user_id, via, booked_seq)
    SELECT b.event_id, b.booking_id, b.user_id, b.op, b.seq
      FROM ledger_batch_6 b
     WHERE b.outcome = 'applied' AND b.op IN ('book', 'promote');

    UPDATE bookings k
       SET cancelled_seq = b.seq
      FROM ledger_batch_6 b
     WHERE b.outcome = 'applied' AND b.op = 'cancel'
       AND k.event_id = b.event_id AND k.booking_id = b.booking_id;

    -- The waiting list takes each user's last word in the batch: joined, or gone.
    WITH last_word AS (
        SELECT DISTINCT ON (b.event_id, b.user_id) b.event_id, b.user_id, b.op, b.seq
          FROM ledger_batch_6 b
         WHERE b.outcome = 'applied' AND b.op IN ('wait', 'leave', 'promote')
         ORDER BY b.event_id, b.user_id, b.seq DESC
    ), gone AS (
        DELETE FROM waitlist w
         USING last_word l
         WHERE w.event_id = l.event_id AND w.user_id = l.user_id AND l.op <> 'wait'
    )
    INSERT INTO waitlist (event_id, user_id, seq)
    SELECT l.event_id, l.user_id, l.seq FROM last_word l WHERE l.op = 'wait'
    ON CONFLICT (event_id, user_id) DO UPDATE SET seq = excluded.seq;

    UPDATE events e
       SET last_seq = a.top
      FROM (SELECT b.event_id, max(b.seq) AS top
              FROM ledger_batch_6 b
             WHERE b.outcome = 'applied'
             GROUP BY b.event_id) a
     WHERE e.event_id = a.event_id AND a.top > e.last_seq;

    RETURN QUERY SELECT b.stream_id, b.outcome FROM ledger_batch_6 b;
END;
$$;
