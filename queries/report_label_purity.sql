-- Label purity of each unit's top-k images: the share of its top-k rows whose label is the unit's most
-- common label (ties to the label that sorts first); images without a label count in the share but are
-- never the dominant label; purity and dominant_label are NULL where none of the top-k has a label.
-- Parameters: $layer (text), $k (integer).
WITH tops AS (
    SELECT t.unit, i.label
    FROM topk AS t
    JOIN images AS i USING (image_id)
    WHERE t.layer = $layer AND t.rank <= $k
),
totals AS (
    SELECT unit, count(*) AS n
    FROM tops
    GROUP BY unit
),
labels AS (
    SELECT
        unit,
        label,
        count(*) AS n,
        row_number() OVER (PARTITION BY unit ORDER BY count(*) DESC, label) AS place
    FROM tops
    WHERE label IS NOT NULL
    GROUP BY unit, label
)
SELECT t.unit, CAST(l.n AS DOUBLE) / t.n AS purity, l.label AS dominant_label
FROM totals AS t
LEFT JOIN labels AS l ON l.unit = t.unit AND l.place = 1
ORDER BY t.unit;
