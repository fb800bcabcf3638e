-- Per unit: the share of each label among its top-k images, the dominant label and its share (purity).
--
-- Parameters: layer (text); k (top images per unit, at most the index's --k; default: all the topk table
-- keeps).
-- One row per unit, purest first, then by unit: layer, unit, name, images (in its top-k: fewer than k only
-- where the index has fewer ok images), dominant_label (its commonest label; equal counts go to the label
-- that sorts first), purity (images of the dominant label / images), labels (distinct labels among them,
-- NULL counted), shares (a list of {label, images, share}, largest first; images without a label are the
-- label NULL). An image without a label is never the dominant label: dominant_label and purity are NULL
-- where none of the unit's top-k has a label. Reads topk and images: works on --store topk indexes.
CREATE OR REPLACE MACRO label_selectivity(layer, k := NULL) AS TABLE
WITH
args AS (SELECT * FROM checked_top(layer, k)),
counted AS (
    SELECT
        t.unit,
        i.label,
        count(*) AS images,
        count(*) / sum(count(*)) OVER (PARTITION BY t.unit) AS share
    FROM topk AS t
    JOIN images AS i ON i.image_id = t.image_id
    WHERE t.layer = layer AND t.rank <= (SELECT a.top FROM args AS a)
    GROUP BY t.unit, i.label
)
SELECT
    u.layer,
    c.unit,
    u.name,
    CAST(sum(c.images) AS BIGINT) AS images,
    first(c.label ORDER BY c.images DESC, c.label) FILTER (WHERE c.label IS NOT NULL) AS dominant_label,
    max(c.share) FILTER (WHERE c.label IS NOT NULL) AS purity,
    count(*) AS labels,
    list({'label': c.label, 'images': c.images, 'share': c.share} ORDER BY c.images DESC, c.label NULLS LAST)
        AS shares
FROM counted AS c
JOIN units AS u ON u.layer = (SELECT a.layer_name FROM args AS a) AND u.unit = c.unit
GROUP BY u.layer, c.unit, u.name
ORDER BY purity DESC NULLS LAST, c.unit;
