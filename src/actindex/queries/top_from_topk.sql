-- Top images for one unit from the precomputed topk table. Parameters: $layer, $unit, $k.
SELECT image_id, act, y, x, x0, y0, x1, y1
FROM topk
WHERE layer = $layer AND unit = $unit AND rank <= $k
ORDER BY rank;
