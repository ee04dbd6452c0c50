-- What the target last received of a record, field by field, for connectors whose updates
-- carry only what changed (`update_body = "changed"`): a JSON object of field name → the
-- SHA-256 of the field's value as sent. Hashes, not values: the record itself is kept in
-- `records`; this only says what the target has.
ALTER TABLE deliveries ADD COLUMN sent_fields TEXT;
