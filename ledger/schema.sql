-- The ledger's schema as it stands after every migration: the one place to read it whole.
-- tests/test_migrations.py checks that applying ledger/migrations/ in order gives exactly this.
-- A new migration changes this file too.

-- The durable ledger: an append-only journal of every state change of every event, and the
-- projections (events, bookings, waiting lists) it implies, kept in the same transactions.

CREATE TABLE events (
    event_id       text        PRIMARY KEY,
    total_tickets  integer     NOT NULL CHECK (total_tickets BETWEEN 0 AND 10000000),
    last_seq       bigint      NOT NULL CHECK (last_seq >= 1),
    created_at     timestamptz NOT NULL,
    waitlist_limit integer     CHECK (waitlist_limit BETWEEN 0 AND 10000000),
    opened_by      text        CHECK (octet_length(opened_by) BETWEEN 1 AND 128)
);
COMMENT ON COLUMN events.last_seq IS
    'Highest sequence number applied; every lower one is in ledger_entries.';
COMMENT ON COLUMN events.waitlist_limit IS
    'How many users may wait at most once the event is sold out; NULL: no limit.';
COMMENT ON COLUMN events.opened_by IS
    'The administrator who opened the event, as the API identified them; NULL: not known.';

CREATE TABLE ledger_entries (
    event_id      text        NOT NULL,
    seq           bigint      NOT NULL CHECK (seq >= 1),
    op            text        NOT NULL
                  CHECK (op IN ('init', 'book', 'wait', 'cancel', 'leave', 'promote')),
    user_id       text,
    booking_id    text,
    total_tickets integer,
    stream_id     text        NOT NULL,
    recorded_at   timestamptz NOT NULL,
    written_at    timestamptz NOT NULL DEFAULT now(),
    format        smallint    NOT NULL DEFAULT 1 CHECK (format >= 1),
    waitlist_limit integer     CHECK (waitlist_limit BETWEEN 0 AND 10000000),
    opened_by     text        CHECK (octet_length(opened_by) BETWEEN 1 AND 128),
    PRIMARY KEY (event_id, seq),
    CHECK ((op = 'init') = (total_tickets IS NOT NULL)),
    CHECK ((op = 'init') = (user_id IS NULL)),
    CHECK ((op IN ('book', 'cancel', 'promote')) = (booking_id IS NOT NULL)),
    CONSTRAINT ledger_entries_init_only
        CHECK (op = 'init' OR (waitlist_limit IS NULL AND opened_by IS NULL))
);
COMMENT ON COLUMN ledger_entries.recorded_at IS
    'When Redis made the change (the outbox entry id''s milliseconds).';
COMMENT ON COLUMN ledger_entries.format IS
    'The outbox record format the entry was written from (ledger/records.py VERSION).';
COMMENT ON COLUMN ledger_entries.waitlist_limit IS
    'init only: the waiting-list limit the event was opened with (record field limit); NULL: none.';
COMMENT ON COLUMN ledger_entries.opened_by IS
    'init only: the administrator who opened the event (record field by); NULL: not known.';

CREATE FUNCTION ledger_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER ledger_entries_no_update_or_delete
    BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only();
CREATE TRIGGER ledger_entries_no_truncate
    BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_append_only();

CREATE TABLE bookings (
    event_id      text    NOT NULL,
    booking_id    text    NOT NULL,
    user_id       text    NOT NULL,
    via           text    NOT NULL CHECK (via IN ('book', 'promote')),
    booked_seq    bigint  NOT NULL,
    cancelled_seq bigint  CHECK (cancelled_seq > booked_seq),
    PRIMARY KEY (event_id, booking_id),
    -- Checked at commit: within one batch a user may cancel and book again.
    CONSTRAINT bookings_one_active_per_user
        EXCLUDE USING btree (event_id WITH =, user_id WITH =) WHERE (cancelled_seq IS NULL)
        DEFERRABLE INITIALLY DEFERRED
);

CREATE TABLE waitlist (
    event_id text   NOT NULL,
    user_id  text   NOT NULL,
    seq      bigint NOT NULL,
    PRIMARY KEY (event_id, user_id)
);
CREATE UNIQUE INDEX waitlist_order ON waitlist (event_id, seq);

-- ledger_apply: apply one batch of outbox records in one statement, idempotently and in
-- per-event sequence order.
--
-- Each record comes out as
--   applied     its seq was the next one of its event: journal row and projections written
--   duplicate   its seq was applied before with the same content (a redelivery): nothing to
--               do, except that a journal row found missing is written back (repair)
--   blocked     an earlier seq of its event is missing: left for a later attempt
--   conflict    its seq was applied before with other content: Redis and the ledger disagree
-- The caller acknowledges applied and duplicate records only.
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
-- Dead letters: outbox records the writer cannot apply (a conflict with the ledger, a record
-- that breaks the format or that PostgreSQL rejects) are copied here and acknowledged, so they
-- pin neither their partition's stream nor the lag; their event is frozen (Redis meta field
-- `frozen`) and its later records are parked here too ('held') until `boxoffice release`.
CREATE TABLE dead_letters (
    id             bigserial   PRIMARY KEY,
    stream         text        NOT NULL,
    stream_id      text        NOT NULL,
    event_id       text,
    seq            bigint,
    reason         text        NOT NULL
                   CONSTRAINT dead_letters_reason_check
                   CHECK (reason IN ('conflict', 'malformed', 'unsupported-version', 'rejected',
                                     'gap', 'held')),
    detail         text        NOT NULL,
    fields         jsonb       NOT NULL,
    writer         text        NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    resolved_at    timestamptz,
    resolved_by    text,
    resolution     text        CHECK (resolution IN ('applied', 'duplicate', 'discarded')),
    UNIQUE (stream, stream_id),
    CHECK ((resolved_at IS NULL) = (resolution IS NULL)),
    CHECK ((resolved_at IS NULL) = (resolved_by IS NULL))
);
COMMENT ON COLUMN dead_letters.reason IS
    'conflict, malformed, unsupported-version (a record format newer than the writer reads), '
    'rejected or gap (blocked past WriterConfig.gap_after_ms: an earlier record of its event '
    'never came): the record that froze its event; held: a later record of a frozen event, '
    'parked until release.';
CREATE INDEX dead_letters_unresolved ON dead_letters (event_id, seq) WHERE resolved_at IS NULL;

-- The ledger's high-water mark per outbox stream (migration 0007): the highest stream entry id
-- the writer committed from it, compared with the stream in Redis to find a store that lost
-- history the ledger has (ledger/writer.py, the fence).
CREATE TABLE outbox_marks (
    stream     text        PRIMARY KEY,
    last_ms    bigint      NOT NULL CHECK (last_ms >= 0),
    last_n     bigint      NOT NULL CHECK (last_n >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE outbox_marks IS
    'Per outbox stream, the highest entry id (<last_ms>-<last_n>) the ledger writer committed.';
