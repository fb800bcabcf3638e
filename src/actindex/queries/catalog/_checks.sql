-- Scalar macros the catalog's table macros share: checks that return their argument or stop the query
-- with a message that says what to do, and what an image's family is. Not listed by `actindex sql --help`
-- (a file whose name starts with "_" is defined first, before the others).

-- The layer, if this index holds it.
CREATE OR REPLACE MACRO checked_layer(layer_name) AS (
    CASE
        WHEN NOT EXISTS (SELECT 1 FROM layers AS l WHERE l.layer = layer_name) THEN error(
            'layer ' || coalesce(CAST(layer_name AS VARCHAR), 'NULL') || ' is not in this index; '
            || 'indexed layers: '
            || coalesce((SELECT string_agg(l.layer, ', ' ORDER BY l.layer) FROM layers AS l), 'none')
        )
        ELSE layer_name
    END
);

-- How many top images per unit to use: `k`, or all that the topk table keeps (`kept`, its largest rank)
-- when k is NULL. Refuses a k the table cannot answer: more than it keeps while the index has more ok
-- images than that (an index of fewer images than its --k keeps them all, so any k is exact).
CREATE OR REPLACE MACRO checked_k(k, kept, ok_images) AS (
    CASE
        WHEN k IS NOT NULL AND k < 1 THEN error('k must be at least 1 (got ' || k || ')')
        WHEN k IS NOT NULL AND k > kept AND kept < ok_images THEN error(
            'k=' || k || ' is more than the ' || kept || ' top images per unit the topk table keeps; '
            || 'ask for k <= ' || kept || ', or index again with a larger --k'
        )
        ELSE coalesce(k, kept)
    END
);

-- Whether an images row is the image given as `image`: its relpath, its uri or its image_id.
CREATE OR REPLACE MACRO image_is(relpath, uri, image_id, image) AS (
    CAST(image AS VARCHAR) IN (relpath, uri, CAST(image_id AS VARCHAR))
);

-- The image_id of an image given by its relpath, uri or image_id, if this index holds it decoded.
CREATE OR REPLACE MACRO checked_image(image) AS (
    CASE
        WHEN NOT EXISTS (SELECT 1 FROM images AS i WHERE image_is(i.relpath, i.uri, i.image_id, image)) THEN error(
            'image ' || coalesce(CAST(image AS VARCHAR), 'NULL') || ' is not in this index; give its '
            || 'relpath, uri or image_id (SELECT image_id, relpath FROM images)'
        )
        WHEN NOT EXISTS (
            SELECT 1 FROM images AS i
            WHERE image_is(i.relpath, i.uri, i.image_id, image) AND i.status = 'ok'
        ) THEN error('image ' || CAST(image AS VARCHAR) || ' could not be decoded: it has no activations')
        ELSE (
            SELECT min(i.image_id) FROM images AS i
            WHERE image_is(i.relpath, i.uri, i.image_id, image) AND i.status = 'ok'
        )
    END
);

-- An image's family (unit_stats): 'stem', the relpath without its extension and without a number that
-- ends the file name after a letter, with the separators (- _ . space) before it: shots/cat_001.jpg and
-- shots/cat-2.png are shots/cat, red/red0.png is red/red; a file name that is only a number
-- (00003.tar#000123.jpg) or has none (cat.jpg) is its own family. 'folder': the relpath up to its last
-- '/' ('' at the root). 'label': the label.
CREATE OR REPLACE MACRO image_family(relpath, label, family) AS (
    CASE family
        WHEN 'stem' THEN regexp_replace(
            regexp_replace(relpath, '\.[^./#]*$', ''), '([^/#0-9._ -])[-_. ]*[0-9]+$', '\1'
        )
        WHEN 'folder' THEN regexp_replace(relpath, '/?[^/]*$', '')
        WHEN 'label' THEN label
        ELSE error('family ' || coalesce(CAST(family AS VARCHAR), 'NULL') || ' is not one of stem, folder, label')
    END
);

-- The checked parameters of a table macro over topk: the layer, if indexed, and how many top images per
-- unit to use (checked_k), as one row (layer_name, top).
CREATE OR REPLACE MACRO checked_top(layer_name, k) AS TABLE
SELECT
    checked_layer(layer_name) AS layer_name,
    checked_k(
        k,
        (SELECT max(t.rank) FROM topk AS t WHERE t.layer = layer_name),
        (SELECT count(*) FROM images AS i WHERE i.status = 'ok')
    ) AS top;
