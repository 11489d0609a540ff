-- Co-consumption pairs (the paper's Copair-i2i): two items positively consumed by the same user within
-- {window_ms} milliseconds of each other. `users` counts distinct users (the support), `co_events` counts
-- (user, positive a, positive b) combinations. Pairs with fewer than {min_support} users are dropped.
-- {positive} is the positives predicate generated from [positives] (the same definition the stream uses).
WITH pos AS (
  SELECT user_id, item_id, ts
  FROM behaviours
  WHERE {positive}
)
SELECT a.item_id AS item_a,
       b.item_id AS item_b,
       COUNT(DISTINCT a.user_id) AS users,
       COUNT(*) AS co_events,
       MIN(LEAST(a.ts, b.ts)) AS first_ts,
       MAX(GREATEST(a.ts, b.ts)) AS last_ts
FROM pos a
JOIN pos b
  ON a.user_id = b.user_id
 AND a.item_id < b.item_id
 AND b.ts BETWEEN a.ts - {window_ms} AND a.ts + {window_ms}
GROUP BY a.item_id, b.item_id
HAVING COUNT(DISTINCT a.user_id) >= {min_support}
ORDER BY users DESC, item_a, item_b
