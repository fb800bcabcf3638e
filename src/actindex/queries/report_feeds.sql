-- The report's "feeds" lists: the units of higher layers each drawn unit feeds most (the contributions rows
-- where it is the source).
-- Parameters: $layer (text), $units (list of integers), $n (units per source unit).
-- One row per (src_unit, unit it feeds), largest |score| first: src_unit, layer, unit, name (where the index
-- names it), score (signed: negative, it inhibits that unit), share (of that unit's total |score|), rank.
SELECT
    c.src_unit,
    c.layer,
    c.unit,
    u.name,
    c.score,
    c.share,
    c.rank
FROM contributions AS c
LEFT JOIN units AS u ON u.layer = c.layer AND u.unit = c.unit
WHERE c.src_layer = $layer AND list_contains($units, c.src_unit)
QUALIFY row_number() OVER (PARTITION BY c.src_unit ORDER BY abs(c.score) DESC, c.layer, c.unit) <= $n
ORDER BY c.src_unit, abs(c.score) DESC, c.layer, c.unit;
