-- What the target last received of a record, field by field, for connectors whose updates
-- carry only what changed (`update_body = "changed"`): a JSON object of field name → the
-- SHA-256 of the field's value as sent. Hashes, not values: the record itself is kept in
-- `records`; this only says what the target has.
ALTER TABLE deliveries ADD COLUMN sent_fields TEXT;

-- An attempt of this delivery was sent and no answer came (a timeout, a dropped connection,
-- a crash while in flight): it may have taken effect. A create is then reconciled with the
-- target, or held for a check, before it is sent again (the endpoint's `lost_answer`).
ALTER TABLE deliveries ADD COLUMN unsure INTEGER NOT NULL DEFAULT 0;
