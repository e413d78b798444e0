-- Records that can evolve: every journal entry says which outbox record format it was
-- written from (`ledger/records.py`: records without a `v` field are format 1, so every entry
-- before this migration is), ledger_apply takes each record's format, and a writer that meets
-- a record of a format newer than it reads quarantines it as 'unsupported-version'.
-- Same outcomes and effects as 0003 otherwise (the format is not content: a redelivery in
-- another format with the same content is still a duplicate).
ALTER TABLE ledger_entries
    ADD COLUMN format smallint NOT NULL DEFAULT 1 CHECK (format >= 1);
COMMENT ON COLUMN ledger_entries.format IS
    'The outbox record format the entry was written from (ledger/records.py VERSION).';

ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_reason_check;
ALTER TABLE dead_letters ADD CONSTRAINT dead_letters_reason_check
    CHECK (reason IN ('conflict', 'malformed', 'unsupported-version', 'rejected', 'gap',
                      'held'));
COMMENT ON COLUMN dead_letters.reason IS
    'conflict, malformed, unsupported-version (a record format newer than the writer reads), '
    'rejected or gap (blocked past WriterConfig.gap_after_ms: an earlier record of its event '
    'never came): the record that froze its event; held: a later record of a frozen event, '
    'parked until release.';

DROP FUNCTION ledger_apply(text[], bigint[], text[], text[], text[], integer[], text[]);

CREATE FUNCTION ledger_apply(
    p_event   text[],
    p_seq     bigint[],
    p_op      text[],
    p_user    text[],
    p_booking text[],
    p_total   integer[],
    p_stream  text[],
    p_format  smallint[]
) RETURNS TABLE (stream_id text, outcome text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    CREATE TEMP TABLE IF NOT EXISTS ledger_batch (
        event_id text, seq bigint, op text, user_id text, booking_id text,
        total_tickets integer, stream_id text, format smallint, recorded_at timestamptz,
        outcome text
    ) ON COMMIT DELETE ROWS;
    DELETE FROM ledger_batch;  -- a second call in one transaction starts afresh

    -- Concurrent batches touching the same events queue here, always in the same order.
    PERFORM 1 FROM events e
     WHERE e.event_id = ANY (p_event)
     ORDER BY e.event_id
       FOR UPDATE;

    INSERT INTO ledger_batch
    WITH input AS (
        SELECT DISTINCT ON (r.event_id, r.seq) r.*
          FROM unnest(p_event, p_seq, p_op, p_user, p_booking, p_total, p_stream, p_format)
               AS r(event_id, seq, op, user_id, booking_id, total_tickets, stream_id, format)
         ORDER BY r.event_id, r.seq, r.stream_id
    ), placed AS (
        SELECT i.*, coalesce(e.last_seq, 0) AS last_seq,
               row_number() OVER (PARTITION BY i.event_id, i.seq > coalesce(e.last_seq, 0)
                                  ORDER BY i.seq) AS nth
          FROM input i
          LEFT JOIN events e ON e.event_id = i.event_id
    )
    SELECT p.event_id, p.seq, p.op, p.user_id, p.booking_id, p.total_tickets, p.stream_id,
           p.format,
           -- the stream entry id is "<milliseconds>-<n>": the time Redis made the change
           to_timestamp(split_part(p.stream_id, '-', 1)::bigint / 1000.0),
           CASE
               WHEN p.seq > p.last_seq THEN
                   CASE WHEN p.seq - p.last_seq = p.nth THEN 'applied' ELSE 'blocked' END
               WHEN j.seq IS NULL THEN 'duplicate'
               WHEN (j.op, j.user_id, j.booking_id, j.total_tickets)
                    IS NOT DISTINCT FROM (p.op, p.user_id, p.booking_id, p.total_tickets)
                   THEN 'duplicate'
               ELSE 'conflict'
           END
      FROM placed p
      LEFT JOIN ledger_entries j ON j.event_id = p.event_id AND j.seq = p.seq;

    INSERT INTO ledger_entries AS j
           (event_id, seq, op, user_id, booking_id, total_tickets, stream_id, recorded_at,
            format)
    SELECT b.event_id, b.seq, b.op, b.user_id, b.booking_id, b.total_tickets, b.stream_id,
           b.recorded_at, b.format
      FROM ledger_batch b
     WHERE b.outcome IN ('applied', 'duplicate')
    ON CONFLICT DO NOTHING;

    INSERT INTO events (event_id, total_tickets, last_seq, created_at)
    SELECT b.event_id, b.total_tickets, 1, b.recorded_at
      FROM ledger_batch b
     WHERE b.outcome = 'applied' AND b.op = 'init';

    INSERT INTO bookings (event_id, booking_id, user_id, via, booked_seq)
    SELECT b.event_id, b.booking_id, b.user_id, b.op, b.seq
      FROM ledger_batch b
     WHERE b.outcome = 'applied' AND b.op IN ('book', 'promote');

    UPDATE bookings k
       SET cancelled_seq = b.seq
      FROM ledger_batch b
     WHERE b.outcome = 'applied' AND b.op = 'cancel'
       AND k.event_id = b.event_id AND k.booking_id = b.booking_id;

    -- The waiting list takes each user's last word in the batch: joined, or gone.
    WITH last_word AS (
        SELECT DISTINCT ON (b.event_id, b.user_id) b.event_id, b.user_id, b.op, b.seq
          FROM ledger_batch b
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
              FROM ledger_batch b
             WHERE b.outcome = 'applied'
             GROUP BY b.event_id) a
     WHERE e.event_id = a.event_id AND a.top > e.last_seq;

    RETURN QUERY SELECT b.stream_id, b.outcome FROM ledger_batch b;
END;
$$;
