-- Per unit: quantiles of its per-image maxima, whether it is dead, whether its top-k is one image family.
--
-- Parameters: layer (text); k (top images per unit to judge families by, at most the index's --k; default:
-- all the topk table keeps); family ('stem' (default), 'folder' or 'label').
-- One row per unit, by unit: layer, unit, name, images (ok images), p50, p90, p99 (linearly interpolated
-- quantiles of the unit's per-image maxima), max, mean, dead (no image above 0: the unit never fires),
-- families (distinct families among its top-k images), top_family (its top-k's largest family; equal
-- sizes go to the family that sorts first), family_share (the share of its top-k in that family; 1 with
-- families = 1: the unit's top-k is one family). An image's family, with 'stem': its relpath without the
-- extension and without a number that ends the file name after a letter (shots/cat_001.jpg and
-- shots/cat-2.png are shots/cat: bursts, video frames, augmented copies; a name that is only a number, or
-- has none, is its own family); 'folder': the relpath up to its last '/'; 'label': its label.
-- Reads activations: dense indexes only.
CREATE OR REPLACE MACRO unit_stats(layer, k := NULL, family := 'stem') AS TABLE
WITH
args AS (SELECT * FROM checked_top(layer, k)),
distribution AS (
    SELECT
        a.unit,
        count(*) AS images,
        quantile_cont(a.act, [0.5, 0.9, 0.99]) AS q,
        max(a.act) AS max,
        avg(a.act) AS mean
    FROM activations AS a
    WHERE a.layer = layer  -- a constant: DuckDB reads that layer's files only
    GROUP BY a.unit
),
families AS (
    -- image_family stops the query for an unknown family
    SELECT t.unit, image_family(i.relpath, i.label, family) AS family_name, count(*) AS images
    FROM topk AS t
    JOIN images AS i ON i.image_id = t.image_id
    WHERE t.layer = layer
      AND t.rank <= (SELECT a.top FROM args AS a)
    GROUP BY t.unit, family_name
),
top_families AS (
    SELECT
        f.unit,
        count(*) AS families,
        first(f.family_name ORDER BY f.images DESC, f.family_name) AS top_family,
        max(f.images) / sum(f.images) AS family_share
    FROM families AS f
    GROUP BY f.unit
)
SELECT
    u.layer,
    d.unit,
    u.name,
    d.images,
    d.q[1] AS p50,
    d.q[2] AS p90,
    d.q[3] AS p99,
    d.max,
    d.mean,
    d.max <= 0 AS dead,
    f.families,
    f.top_family,
    f.family_share
FROM distribution AS d
JOIN units AS u ON u.layer = (SELECT a.layer_name FROM args AS a) AND u.unit = d.unit
LEFT JOIN top_families AS f ON f.unit = d.unit
ORDER BY d.unit;
