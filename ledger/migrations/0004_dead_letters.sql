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
                   CHECK (reason IN ('conflict', 'malformed', 'rejected', 'gap', 'held')),
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
    'conflict, malformed, rejected or gap (blocked past WriterConfig.gap_after_ms: an earlier '
    'record of its event never came): the record that froze its event; held: a later record '
    'of a frozen event, parked until release.';
CREATE INDEX dead_letters_unresolved ON dead_letters (event_id, seq) WHERE resolved_at IS NULL;
