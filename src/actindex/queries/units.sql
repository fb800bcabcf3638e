-- The units view: every unit of every indexed layer, with its name (NULL where the index has none).
-- `unit_names` is the index's units.parquet (the named units), or no rows in an index written without one.
SELECT
    l.layer,
    CAST(u.unit AS INTEGER) AS unit,
    n.name
FROM layers AS l
CROSS JOIN unnest(range(l.channels)) AS u (unit)
LEFT JOIN unit_names AS n ON n.layer = l.layer AND n.unit = u.unit
