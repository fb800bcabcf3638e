-- Top images for one unit straight from the activations table (no topk table needed), best first.
-- Parameters: $layer (text), $unit (integer), $k (integer).
SELECT image_id, act, y, x
FROM activations
WHERE layer = $layer AND unit = $unit
ORDER BY act DESC, image_id
LIMIT $k;
