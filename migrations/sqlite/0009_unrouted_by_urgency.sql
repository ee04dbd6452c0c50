-- Routing takes the most urgent unrouted revisions first (`serve` routes as records arrive:
-- an immediate flag must not wait behind a backlog). The expression is the one `unrouted`
-- orders by, so the order is read from this index, not sorted afresh each batch.
CREATE INDEX records_unrouted_by_urgency ON records (
    (CASE WHEN urgency = 'immediate' THEN 0
          WHEN urgency = 'same_day' OR kind = 'incident' THEN 1
          ELSE 2 END)
) WHERE routed = 0;
