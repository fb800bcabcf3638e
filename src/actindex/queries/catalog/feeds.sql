-- The units of higher layers that a unit feeds most: the contributions rows where it is the source.
--
-- Parameters: src_layer (text), src_unit (integer); n (rows, default 10).
-- One row per unit it contributes to, largest |score| first: layer, unit, name (where the index has one),
-- score (signed: negative, it inhibits that unit), share (of that unit's total |score|), rank (its rank among
-- that unit's sources). Only units whose contributions were computed from src_layer appear, and only where
-- this unit is among their --top sources.
CREATE OR REPLACE MACRO feeds(src_layer, src_unit, n := 10) AS TABLE
SELECT
    c.layer,
    c.unit,
    u.name,
    c.score,
    c.share,
    c.rank
FROM contributions AS c
LEFT JOIN units AS u ON u.layer = c.layer AND u.unit = c.unit
WHERE c.src_layer = src_layer AND c.src_unit = src_unit
ORDER BY abs(c.score) DESC, c.layer, c.unit
LIMIT n;
