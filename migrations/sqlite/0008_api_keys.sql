-- API keys for `serve` (SPEC §6): each belongs to a trust and a set of its schools, with a
-- scope. Only the public id and a SHA-256 of the secret are kept; the key is shown once.
CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    name         TEXT,
    trust        TEXT NOT NULL,
    -- JSON array of school URNs.
    schools      TEXT NOT NULL,
    scope        TEXT NOT NULL CHECK (scope IN ('write', 'read-only', 'export')),
    secret_hash  TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    last_used_at TEXT,
    revoked_at   TEXT
) STRICT;
