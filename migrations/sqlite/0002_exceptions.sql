-- Compliance exceptions, each on the record revision it was raised on. A later revision
-- re-evaluates: an exception it no longer raises is `resolved`, one it raises again is
-- `superseded` by the new revision's row. Nothing is deleted.
CREATE TABLE exceptions (
    trust              TEXT    NOT NULL,
    kind               TEXT    NOT NULL,
    id                 TEXT    NOT NULL,
    revision           INTEGER NOT NULL,
    school_urn         TEXT    NOT NULL,
    rule               TEXT    NOT NULL,
    severity           TEXT    NOT NULL CHECK (severity IN ('error', 'warning', 'info')),
    message            TEXT    NOT NULL,
    raised_at          TEXT    NOT NULL,
    state              TEXT    NOT NULL CHECK (state IN ('open', 'resolved', 'superseded')),
    closed_at          TEXT,
    closed_by_revision INTEGER,
    PRIMARY KEY (trust, kind, id, revision, rule)
) STRICT;

CREATE INDEX exceptions_open ON exceptions (trust, school_urn, rule) WHERE state = 'open';
