-- The durable ledger: an append-only journal of every state change of every event, and the
-- projections (events, bookings, waiting lists) it implies, kept in the same transactions.

CREATE TABLE events (
    event_id      text        PRIMARY KEY,
    total_tickets integer     NOT NULL CHECK (total_tickets BETWEEN 0 AND 10000000),
    last_seq      bigint      NOT NULL CHECK (last_seq >= 1),
    created_at    timestamptz NOT NULL
);
COMMENT ON COLUMN events.last_seq IS
    'Highest sequence number applied; every lower one is in ledger_entries.';

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
    PRIMARY KEY (event_id, seq),
    CHECK ((op = 'init') = (total_tickets IS NOT NULL)),
    CHECK ((op = 'init') = (user_id IS NULL)),
    CHECK ((op IN ('book', 'cancel', 'promote')) = (booking_id IS NOT NULL))
);
COMMENT ON COLUMN ledger_entries.recorded_at IS
    'When Redis made the change (the outbox entry id''s milliseconds).';

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
