-- Routing finds a picked revision's earlier unrouted revisions by the records' primary key
-- (trust, kind, id, revision), so the partial index of 0004 only cost every new record one
-- more index entry. (PostgreSQL never had it: its 0013 is empty.)
DROP INDEX records_unrouted;
