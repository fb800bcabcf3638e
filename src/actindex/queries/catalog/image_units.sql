-- For one image: the units of a layer it excites most, each measured against its own distribution.
--
-- Parameters: layer (text); image (its relpath, uri or image_id); n (units to return, default 10).
-- For each unit of the layer: act (the image's maximum activation), p99 (the 99th percentile, linearly
-- interpolated, of the unit's per-image maxima over every ok image of the index), ratio = act / p99
-- (above 1: the image is in the unit's top 1%; NULL where p99 <= 0, a unit that is at most zero on 99% of
-- the images), unit_rank (1 = no image of the index excites the unit more; equal acts share a rank) and
-- images (ok images). The n rows with the largest ratio (NULL last), then the best unit_rank, then by unit;
-- columns layer, unit, name, act, p99, ratio, unit_rank, images. Reads activations: dense indexes only.
CREATE OR REPLACE MACRO image_units(layer, image, n := 10) AS TABLE
WITH
given AS (SELECT layer AS layer_name, image AS image_asked),  -- the parameters, named apart from columns
args AS (
    SELECT checked_layer(g.layer_name) AS layer_name, checked_image(g.image_asked) AS image_id
    FROM given AS g
),
acts AS (
    SELECT a.unit, a.image_id, a.act
    FROM activations AS a
    WHERE a.layer = layer  -- a constant: DuckDB reads that layer's files only
),
mine AS (
    SELECT x.unit, x.act FROM acts AS x WHERE x.image_id = (SELECT a.image_id FROM args AS a)
),
per_unit AS (
    SELECT
        x.unit,
        any_value(m.act) AS act,
        quantile_cont(x.act, 0.99) AS p99,
        1 + count(*) FILTER (WHERE x.act > m.act) AS unit_rank,
        count(*) AS images
    FROM acts AS x
    JOIN mine AS m ON m.unit = x.unit
    GROUP BY x.unit
)
SELECT
    u.layer,
    p.unit,
    u.name,
    p.act,
    p.p99,
    CASE WHEN p.p99 > 0 THEN p.act / p.p99 END AS ratio,
    p.unit_rank,
    p.images
FROM per_unit AS p
JOIN units AS u ON u.layer = (SELECT a.layer_name FROM args AS a) AND u.unit = p.unit
ORDER BY ratio DESC NULLS LAST, p.unit_rank, p.unit
LIMIT n;
