-- Top images for units of one layer from the topk table, best first, with the unit's name (NULL where it has
-- none), the receptive-field box of each peak and `ties`: how many images of the index share the row's act
-- for the unit.
-- Parameters: $layer (text), $units (list of integers), $k (integer).
SELECT
    t.layer,
    t.unit,
    n.name,
    t.rank,
    t.act,
    t.image_id,
    i.label,
    i.uri,
    i.relpath,
    i.width,
    i.height,
    t.y,
    t.x,
    t.x0,
    t.y0,
    t.x1,
    t.y1,
    t.ties
FROM topk AS t
JOIN images AS i USING (image_id)
LEFT JOIN units AS n ON n.layer = t.layer AND n.unit = t.unit
WHERE t.layer = $layer
  AND list_contains($units, t.unit)
  AND t.rank <= $k
ORDER BY t.unit, t.rank;
