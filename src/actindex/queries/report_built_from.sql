-- The report's "built from" lists: each drawn unit's strongest sources in the contributions table.
-- Parameters: $layer (text), $units (list of integers), $n (sources per unit).
-- One row per (unit, source), largest |score| first: unit, src_layer, src_unit, src_name (where the index
-- names it), score (signed: negative inhibits), share (of the source layer's total |score|), rank.
SELECT
    c.unit,
    c.src_layer,
    c.src_unit,
    u.name AS src_name,
    c.score,
    c.share,
    c.rank
FROM contributions AS c
LEFT JOIN units AS u ON u.layer = c.src_layer AND u.unit = c.src_unit
WHERE c.layer = $layer AND list_contains($units, c.unit)
QUALIFY row_number() OVER (PARTITION BY c.unit ORDER BY abs(c.score) DESC, c.src_layer, c.rank) <= $n
ORDER BY c.unit, abs(c.score) DESC, c.src_layer, c.rank;
