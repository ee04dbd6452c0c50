-- Completeness (SPEC §5): every leaf of a school's event carries `school_seq`, the school's
-- own sequence number in its trust's log, and no event's time goes back before the log's
-- last. The log keeps where each school's count stands and its last event time.
CREATE TABLE audit_school_seqs (
    trust    TEXT    NOT NULL,
    school   TEXT    NOT NULL,
    next_seq INTEGER NOT NULL,
    PRIMARY KEY (trust, school)
) STRICT, WITHOUT ROWID;

ALTER TABLE audit_logs ADD COLUMN last_at TEXT;

-- A log written before this migration holds leaves without `school_seq`: its schools' events
-- are counted (and its last time found) by the first append after it, in that append's
-- transaction, so the first numbered leaf of a school carries its true position in the log.
ALTER TABLE audit_logs ADD COLUMN numbered INTEGER NOT NULL DEFAULT 1;
UPDATE audit_logs SET numbered = 0 WHERE size > 0;
