-- Nothing to change: SQLite's 0013 drops an index this schema never had. Both back ends
-- share schema version numbers, so this one is here too.
SELECT 1;
