-- Histogram of each unit's per-image maxima: $bins equal-width bins from the unit's smallest to its largest
-- finite act (NaN and infinite acts are left out); a unit whose acts are all equal has one full first bin.
-- Parameters: $layer (text), $units (list of integers), $bins (integer).
WITH acts AS (
    SELECT unit, CAST(act AS DOUBLE) AS act
    FROM activations
    WHERE layer = $layer AND list_contains($units, unit) AND isfinite(act)
),
bounds AS (
    SELECT unit, min(act) AS lo, max(act) AS hi
    FROM acts
    GROUP BY unit
)
SELECT
    a.unit,
    b.lo,
    b.hi,
    CAST(least(coalesce(floor((a.act - b.lo) / nullif(b.hi - b.lo, 0) * $bins), 0), $bins - 1) AS INTEGER)
        AS bin,
    count(*) AS images
FROM acts AS a
JOIN bounds AS b USING (unit)
GROUP BY a.unit, b.lo, b.hi, bin
ORDER BY a.unit, bin;
