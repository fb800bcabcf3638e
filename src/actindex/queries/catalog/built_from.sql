-- Which units of a lower layer build a unit: its rows of the contributions table, strongest first.
--
-- Parameters: layer (text), unit (integer); src_layer (text, default NULL: every lower layer computed).
-- One row per source unit kept by `actindex contributions` (its --top): src_layer, src_unit, src_name (the
-- source unit's name, where the index has one and the source layer is indexed), score (signed: negative
-- inhibits), share (score / the sum of |score| over the source layer's channels), rank (1 = largest |score|),
-- images (the unit's top images the score is averaged over), indexed (whether src_layer is an indexed
-- layer, so its units have cards). Stops with a message when the unit has no contributions yet.
CREATE OR REPLACE MACRO built_from(layer, unit, src_layer := NULL) AS TABLE
WITH found AS (
    SELECT c.*
    FROM contributions AS c
    WHERE c.layer = checked_layer(layer) AND c.unit = unit AND (src_layer IS NULL OR c.src_layer = src_layer)
)
SELECT
    f.src_layer,
    f.src_unit,
    u.name AS src_name,
    f.score,
    f.share,
    f.rank,
    f.images,
    EXISTS (SELECT 1 FROM layers AS l WHERE l.layer = f.src_layer) AS indexed
FROM found AS f
LEFT JOIN units AS u ON u.layer = f.src_layer AND u.unit = f.src_unit
WHERE (SELECT count(*) FROM found) > 0 OR error(
    'no contributions of ' || CAST(layer AS VARCHAR) || ' unit ' || CAST(unit AS VARCHAR)
    || ' yet; compute them with: actindex contributions INDEX --layer ' || CAST(layer AS VARCHAR)
)
ORDER BY f.src_layer, f.rank;
