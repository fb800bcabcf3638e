-- Top images for units straight from the activations table: exact for any k, best first (NaN last, ties
-- to the smaller image_id), with the unit's name and `ties`: how many images of the index share the row's act
-- for the unit.
-- Parameters: $layer (text), $units (list of integers), $k (integer).
WITH ranked AS (
    SELECT
        unit,
        image_id,
        act,
        y,
        x,
        row_number() OVER (PARTITION BY unit ORDER BY isnan(act), act DESC, image_id) AS rank,
        count(*) OVER (PARTITION BY unit, act) AS ties
    FROM activations
    WHERE layer = $layer AND list_contains($units, unit)
)
SELECT
    $layer AS layer,
    r.unit,
    n.name,
    CAST(r.rank AS INTEGER) AS rank,
    r.act,
    r.image_id,
    i.label,
    i.uri,
    i.relpath,
    i.width,
    i.height,
    r.y,
    r.x,
    r.ties
FROM ranked AS r
JOIN images AS i USING (image_id)
LEFT JOIN units AS n ON n.layer = $layer AND n.unit = r.unit
WHERE r.rank <= $k
ORDER BY r.unit, r.rank;
