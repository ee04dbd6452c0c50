-- Retention (SPEC §6, `[retention] content_days`): a revision whose content was purged keeps
-- what the trail needs — kind, id, revision, content hash, school, times — with its content
-- emptied and the time of the purge here. NULL while the content is held.
ALTER TABLE records ADD COLUMN purged_at TEXT;

-- A revision's deliveries whatever their destination: purge checks each is delivered, the
-- exporter says where a record went.
CREATE INDEX deliveries_of_revision ON deliveries (trust, kind, record_id, revision);
