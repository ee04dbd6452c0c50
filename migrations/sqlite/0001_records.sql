-- Every revision of every record, exactly as stored (RFC 8785 canonical JSON).
CREATE TABLE records (
    trust        TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    revision     INTEGER NOT NULL,
    school_urn   TEXT    NOT NULL,
    visit_id     TEXT,
    urgency      TEXT,
    content_hash TEXT    NOT NULL,
    content      TEXT    NOT NULL,
    source       TEXT    NOT NULL,
    received_at  TEXT    NOT NULL,
    -- 1 for the latest revision of (trust, kind, id), 0 once superseded.
    current      INTEGER NOT NULL,
    PRIMARY KEY (trust, kind, id, revision)
) STRICT;

CREATE INDEX records_current ON records (trust, school_urn, kind) WHERE current = 1;

-- Rejections and conflicts met at intake: ids, pointers and rules only, never content.
CREATE TABLE intake_issues (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    at          TEXT    NOT NULL,
    issue       TEXT    NOT NULL CHECK (issue IN ('rejection', 'conflict')),
    file        TEXT    NOT NULL,
    line        INTEGER,
    record_id   TEXT,
    revision    INTEGER,
    pointer     TEXT,
    rule        TEXT    NOT NULL,
    message     TEXT    NOT NULL
) STRICT;
