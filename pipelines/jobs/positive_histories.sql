-- Positive histories: per user, the items of their last {history} viewed items (ranked by the user's latest
-- event on the item) that they consumed positively, with how many positive events each item got from the
-- user (`positives`, the paper's "positive behaviours") and the time of the latest one (`ts`).
-- Feeds seq2item (query/target selection) and id2item (item2vec sequences); rows come ordered by user, then
-- time, so each user's history reads oldest first.
-- {positive} is the positives predicate generated from [positives] (the same definition the stream uses).
WITH seen AS (
  SELECT user_id,
         item_id,
         MAX(ts) AS last_seen,
         SUM(CASE WHEN {positive} THEN 1 ELSE 0 END) AS positives,
         MAX(CASE WHEN {positive} THEN ts END) AS last_positive
  FROM behaviours
  GROUP BY user_id, item_id
),
recent AS (
  SELECT user_id, item_id, positives, last_positive,
         ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY last_seen DESC, item_id) AS recency
  FROM seen
)
SELECT user_id, item_id, CAST(positives AS BIGINT) AS positives, last_positive AS ts
FROM recent
WHERE recency <= {history} AND positives > 0
ORDER BY user_id, ts, item_id
