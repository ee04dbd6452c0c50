-- A claimed delivery's lease: a fencing token that goes up by one with every claim, the
-- process holding it and until when. An outcome is written only while the token still
-- matches (on PostgreSQL several instances share the work; on SQLite one writer holds the
-- store, and the same rule keeps a stale outcome out).
ALTER TABLE deliveries ADD COLUMN lease_token INTEGER NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN lease_owner TEXT;
ALTER TABLE deliveries ADD COLUMN lease_until TEXT;
