-- Routing: a stored revision is routed once; its deliveries are written in the same
-- transaction that marks it routed.
ALTER TABLE records ADD COLUMN routed INTEGER NOT NULL DEFAULT 0;
CREATE INDEX records_unrouted ON records (trust, kind, id, revision) WHERE routed = 0;

-- One delivery per destination per record revision (SPEC §4).
CREATE TABLE deliveries (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    trust         TEXT    NOT NULL,
    destination   TEXT    NOT NULL,
    kind          TEXT    NOT NULL,
    record_id     TEXT    NOT NULL,
    revision      INTEGER NOT NULL,
    school_urn    TEXT    NOT NULL,
    route         TEXT    NOT NULL,
    map           TEXT    NOT NULL,
    -- 0 immediate, 1 same_day, 2 everything else: urgency decides the order of delivery.
    priority      INTEGER NOT NULL,
    idempotency_key TEXT  NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('pending', 'in_flight', 'delivered', 'retrying', 'dead')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_at       TEXT    NOT NULL,
    last_error    TEXT,
    last_status   INTEGER,
    -- The target's id for what this delivery created or updated.
    target_id     TEXT,
    delivered_at  TEXT,
    -- A dead letter's saved response.
    response      TEXT,
    created_at    TEXT    NOT NULL,
    updated_at    TEXT    NOT NULL,
    UNIQUE (trust, destination, kind, record_id, revision)
) STRICT;

CREATE INDEX deliveries_due ON deliveries (trust, destination, priority, seq) WHERE state IN ('pending', 'retrying');
CREATE INDEX deliveries_state ON deliveries (trust, destination, state);

-- Every attempt, for the audit bundle's deliveries.csv: ids, states and reasons only.
CREATE TABLE delivery_attempts (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery   INTEGER NOT NULL REFERENCES deliveries (seq),
    attempt    INTEGER NOT NULL,
    at         TEXT    NOT NULL,
    outcome    TEXT    NOT NULL,
    status     INTEGER,
    error      TEXT
) STRICT;

CREATE INDEX delivery_attempts_of ON delivery_attempts (delivery);
