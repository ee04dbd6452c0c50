-- Look-ups (connectors' `[lookups]`): the target's id for a record's value, by
-- destination, school and look-up, kept until `expires_at`. `value` NULL: not found. A
-- listing read whole is marked by the row whose key is '' (every entry then is here).
CREATE TABLE lookups (
    trust TEXT NOT NULL,
    destination TEXT NOT NULL,
    school_urn TEXT NOT NULL,
    name TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT,
    expires_at TEXT NOT NULL,
    PRIMARY KEY (trust, destination, school_urn, name, key)
) WITHOUT ROWID;
