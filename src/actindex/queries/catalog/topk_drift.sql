-- Per unit: how much its top-k images moved between this index and a second one (checkpoint drift).
--
-- Parameters: layer (text); k (top images per unit to compare, at most either index's --k; default: all
-- that both topk tables keep).
-- Needs a second index of the same images, whose views are other.*: `actindex sql IDX --compare OTHER_IDX`,
-- or in Python connect(IDX, compare=OTHER_IDX) or catalog.compare_topk(IDX, OTHER_IDX, layer). An image has
-- the same image_id in both (the hash of its relpath), so the lists are compared by image_id.
-- One row per unit, most changed first (then by unit): layer, unit, name (this index's), compared (the
-- longer of the two lists: k, or fewer where an index has fewer ok images), shared (images in both lists),
-- overlap = shared / compared (1: the same images), jaccard = shared / images in either list, drift =
-- 1 - overlap, top and other_top (the unit's best image here and there, as relpaths).
CREATE OR REPLACE MACRO topk_drift(layer, k := NULL) AS TABLE
WITH
args AS (
    SELECT
        h.layer_name,
        CASE
            WHEN NOT EXISTS (SELECT 1 FROM other.layers AS o WHERE o.layer = h.layer_name) THEN error(
                'layer ' || h.layer_name || ' is not in the second index; its layers: '
                || coalesce((SELECT string_agg(o.layer, ', ' ORDER BY o.layer) FROM other.layers AS o), 'none')
            )
            WHEN (SELECT l.channels FROM layers AS l WHERE l.layer = h.layer_name)
                <> (SELECT o.channels FROM other.layers AS o WHERE o.layer = h.layer_name) THEN error(
                'layer ' || h.layer_name || ' has '
                || (SELECT l.channels FROM layers AS l WHERE l.layer = h.layer_name) || ' units here and '
                || (SELECT o.channels FROM other.layers AS o WHERE o.layer = h.layer_name)
                || ' in the second index: not the same layer'
            )
            ELSE least(
                h.top,
                checked_k(
                    k,
                    (SELECT max(t.rank) FROM other.topk AS t WHERE t.layer = h.layer_name),
                    (SELECT count(*) FROM other.images AS i WHERE i.status = 'ok')
                )
            )
        END AS top
    FROM checked_top(layer, k) AS h  -- this index's layer and k
),
here AS (
    SELECT t.unit, t.image_id, t.rank
    FROM topk AS t
    WHERE t.layer = layer AND t.rank <= (SELECT a.top FROM args AS a)
),
there AS (
    SELECT t.unit, t.image_id, t.rank
    FROM other.topk AS t
    WHERE t.layer = layer AND t.rank <= (SELECT a.top FROM args AS a)
),
compared AS (
    SELECT
        coalesce(h.unit, o.unit) AS unit,
        count(h.image_id) AS here_images,
        count(o.image_id) AS there_images,
        count(h.image_id) FILTER (WHERE o.image_id IS NOT NULL) AS shared
    FROM here AS h
    FULL JOIN there AS o ON o.unit = h.unit AND o.image_id = h.image_id
    GROUP BY coalesce(h.unit, o.unit)
)
SELECT
    u.layer,
    c.unit,
    u.name,
    greatest(c.here_images, c.there_images) AS compared,
    c.shared,
    c.shared / greatest(c.here_images, c.there_images) AS overlap,
    c.shared / (c.here_images + c.there_images - c.shared) AS jaccard,
    1 - c.shared / greatest(c.here_images, c.there_images) AS drift,
    hi.relpath AS top,
    oi.relpath AS other_top
FROM compared AS c
JOIN units AS u ON u.layer = (SELECT a.layer_name FROM args AS a) AND u.unit = c.unit
LEFT JOIN here AS h1 ON h1.unit = c.unit AND h1.rank = 1
LEFT JOIN images AS hi ON hi.image_id = h1.image_id
LEFT JOIN there AS o1 ON o1.unit = c.unit AND o1.rank = 1
LEFT JOIN other.images AS oi ON oi.image_id = o1.image_id
ORDER BY overlap, c.unit;
