-- The evidence trail is kept in tiles (C2SP tlog-tiles' cut, see src/audit/tree.rs): leaves in
-- bundles of 256 and interior nodes only every 8th level, so that an append writes about one
-- row per 256 events instead of two rows per event. Any other node is folded from one tile.

-- Bundle n holds the exact bytes of leaves [256·n, 256·n + k), one a line: compact JSON never
-- holds a raw line feed. Only the last bundle grows; the others never change.
CREATE TABLE audit_bundles (
    trust  TEXT    NOT NULL,
    n      INTEGER NOT NULL,
    leaves TEXT    NOT NULL,
    PRIMARY KEY (trust, n)
) STRICT;

INSERT INTO audit_bundles (trust, n, leaves)
    SELECT trust, idx / 256, group_concat(leaf, char(10) ORDER BY idx)
    FROM audit_leaves
    GROUP BY trust, idx / 256;

DROP TABLE audit_leaves;

DELETE FROM audit_nodes WHERE level % 8 != 0;

-- Who appended last (a random id per open store): a store that finds its own mark at the size
-- it left skips reading the log's edge back before its next append.
ALTER TABLE audit_logs ADD COLUMN writer INTEGER NOT NULL DEFAULT 0;
