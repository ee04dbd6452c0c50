-- The PostgreSQL store, as the SQLite store stands after its migration 0012: one schema
-- version for both back ends (`doorstep migrate` names it). PostgreSQL came at version 12,
-- so its first migration is the whole schema; every later one is added to both folders
-- under the same number.
--
-- Times are RFC 3339 UTC text with microseconds, as in SQLite (they sort as text), except
-- a lease's expiry, which is the database's own clock: instances on several machines agree
-- on it.

CREATE TABLE records (
    seq          BIGINT  GENERATED ALWAYS AS IDENTITY UNIQUE,
    trust        TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    revision     BIGINT  NOT NULL,
    school_urn   TEXT    NOT NULL,
    visit_id     TEXT,
    urgency      TEXT,
    content_hash TEXT    NOT NULL,
    content      TEXT    NOT NULL,
    source       TEXT    NOT NULL,
    received_at  TEXT    NOT NULL,
    current      BOOLEAN NOT NULL,
    routed       BOOLEAN NOT NULL DEFAULT false,
    purged_at    TEXT,
    PRIMARY KEY (trust, kind, id, revision)
);
CREATE INDEX records_current ON records (trust, school_urn, kind, seq) WHERE current;
CREATE INDEX records_unrouted_by_urgency ON records (
    (CASE WHEN urgency = 'immediate' THEN 0
          WHEN urgency = 'same_day' OR kind = 'incident' THEN 1
          ELSE 2 END), seq
) WHERE NOT routed;
CREATE INDEX records_by_trust ON records (trust, seq);
-- Rows change often here (current, routed): leave room on each page for the new version.
ALTER TABLE records SET (fillfactor = 90);

CREATE TABLE intake_issues (
    seq         BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          TEXT    NOT NULL,
    issue       TEXT    NOT NULL CHECK (issue IN ('rejection', 'conflict')),
    file        TEXT    NOT NULL,
    line        BIGINT,
    record_id   TEXT,
    revision    BIGINT,
    pointer     TEXT,
    rule        TEXT    NOT NULL,
    message     TEXT    NOT NULL
);

CREATE TABLE exceptions (
    trust              TEXT    NOT NULL,
    kind               TEXT    NOT NULL,
    id                 TEXT    NOT NULL,
    revision           BIGINT  NOT NULL,
    school_urn         TEXT    NOT NULL,
    rule               TEXT    NOT NULL,
    severity           TEXT    NOT NULL CHECK (severity IN ('error', 'warning', 'info')),
    message            TEXT    NOT NULL,
    raised_at          TEXT    NOT NULL,
    state              TEXT    NOT NULL CHECK (state IN ('open', 'resolved', 'superseded')),
    closed_at          TEXT,
    closed_by_revision BIGINT,
    PRIMARY KEY (trust, kind, id, revision, rule)
);
CREATE INDEX exceptions_open ON exceptions (trust, school_urn, rule) WHERE state = 'open';

-- One row per trust: the head of its log. Every transaction that appends events takes this
-- row's lock first (`SELECT … FOR UPDATE`), so positions are given out one writer at a time,
-- in commit order, with no gap when a transaction rolls back.
CREATE TABLE audit_logs (
    trust    TEXT    PRIMARY KEY,
    size     BIGINT  NOT NULL,
    writer   BIGINT  NOT NULL DEFAULT 0,
    last_at  TEXT,
    numbered BIGINT  NOT NULL DEFAULT 1
);
CREATE TABLE audit_bundles (
    trust  TEXT    NOT NULL,
    n      BIGINT  NOT NULL,
    leaves TEXT    NOT NULL,
    PRIMARY KEY (trust, n)
);
CREATE TABLE audit_nodes (
    trust TEXT    NOT NULL,
    level BIGINT  NOT NULL,
    idx   BIGINT  NOT NULL,
    hash  BYTEA   NOT NULL,
    PRIMARY KEY (trust, level, idx)
);
CREATE TABLE audit_checkpoints (
    trust TEXT    NOT NULL,
    size  BIGINT  NOT NULL,
    at    TEXT    NOT NULL,
    note  TEXT    NOT NULL,
    PRIMARY KEY (trust, size)
);
CREATE TABLE audit_school_seqs (
    trust    TEXT    NOT NULL,
    school   TEXT    NOT NULL,
    next_seq BIGINT  NOT NULL,
    PRIMARY KEY (trust, school)
);

CREATE TABLE deliveries (
    seq             BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    trust           TEXT    NOT NULL,
    destination     TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    record_id       TEXT    NOT NULL,
    revision        BIGINT  NOT NULL,
    school_urn      TEXT    NOT NULL,
    route           TEXT    NOT NULL,
    map             TEXT    NOT NULL,
    priority        BIGINT  NOT NULL,
    idempotency_key TEXT    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'in_flight', 'delivered', 'retrying', 'dead')),
    attempts        BIGINT  NOT NULL DEFAULT 0,
    next_at         TEXT    NOT NULL,
    last_error      TEXT,
    last_status     BIGINT,
    target_id       TEXT,
    delivered_at    TEXT,
    response        TEXT,
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL,
    sent_fields     TEXT,
    unsure          BOOLEAN NOT NULL DEFAULT false,
    -- The lease of a delivery in flight: its fencing token (only goes up, one more per
    -- claim), the instance holding it, and until when (the database's clock).
    lease_token     BIGINT  NOT NULL DEFAULT 0,
    lease_owner     TEXT,
    lease_until     TIMESTAMPTZ,
    UNIQUE (trust, destination, kind, record_id, revision)
);
CREATE INDEX deliveries_due ON deliveries (trust, destination, priority, seq) WHERE state IN ('pending', 'retrying');
-- No index on (trust, destination, state): with it, PostgreSQL's planner (on statistics
-- taken while the table was small) looked up a record's other revisions through every
-- delivered or pending row of the destination — a claim grew with the queue. A record's
-- revisions are found through the UNIQUE key above; deliveries in flight through these.
CREATE INDEX deliveries_in_flight ON deliveries (trust, destination) WHERE state = 'in_flight';
CREATE INDEX deliveries_of_revision ON deliveries (trust, kind, record_id, revision);
CREATE INDEX deliveries_leased ON deliveries (lease_owner) WHERE state = 'in_flight';
-- The hottest table: every claim and outcome updates a row. Room on each page for HOT
-- updates, and vacuumed after 2% of it changed rather than 20% (docs/operations.md).
ALTER TABLE deliveries SET (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02);

CREATE TABLE delivery_attempts (
    seq        BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery   BIGINT  NOT NULL REFERENCES deliveries (seq),
    attempt    BIGINT  NOT NULL,
    at         TEXT    NOT NULL,
    outcome    TEXT    NOT NULL,
    status     BIGINT,
    error      TEXT
);
CREATE INDEX delivery_attempts_of ON delivery_attempts (delivery);

CREATE TABLE lookups (
    trust       TEXT NOT NULL,
    destination TEXT NOT NULL,
    school_urn  TEXT NOT NULL,
    name        TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT,
    expires_at  TEXT NOT NULL,
    PRIMARY KEY (trust, destination, school_urn, name, key)
);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    name         TEXT,
    trust        TEXT NOT NULL,
    schools      TEXT NOT NULL,
    scope        TEXT NOT NULL CHECK (scope IN ('write', 'read-only', 'export')),
    secret_hash  TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    last_used_at TEXT,
    revoked_at   TEXT
);
