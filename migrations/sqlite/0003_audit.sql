-- The evidence trail: one append-only RFC 9162 Merkle log per trust.
CREATE TABLE audit_logs (
    trust TEXT    PRIMARY KEY,
    size  INTEGER NOT NULL
) STRICT;

-- Leaves: the exact bytes of each event (compact canonical JSON), nothing else: their hashes
-- (level 0 of the tree) are recomputed from the text when a proof needs them, and an export
-- reads school and time from the leaf as it scans one trust's leaves in order. Intake writes
-- as little as it can.
CREATE TABLE audit_leaves (
    trust TEXT    NOT NULL,
    idx   INTEGER NOT NULL,
    leaf  TEXT    NOT NULL,
    PRIMARY KEY (trust, idx)
) STRICT;

-- Complete subtrees above the leaves: node (level, idx) covers leaves
-- [idx * 2^level, (idx + 1) * 2^level). Level 0 lives in audit_leaves.
CREATE TABLE audit_nodes (
    trust TEXT    NOT NULL,
    level INTEGER NOT NULL,
    idx   INTEGER NOT NULL,
    hash  BLOB    NOT NULL,
    PRIMARY KEY (trust, level, idx)
) STRICT, WITHOUT ROWID;

-- Signed checkpoints as issued: the first one signed at each size.
CREATE TABLE audit_checkpoints (
    trust TEXT    NOT NULL,
    size  INTEGER NOT NULL,
    at    TEXT    NOT NULL,
    note  TEXT    NOT NULL,
    PRIMARY KEY (trust, size)
) STRICT;
