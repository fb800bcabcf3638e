-- The named units of one layer (the `units` view; name is NULL for a unit without a name).
-- Parameters: $layer (text).
SELECT unit, name
FROM units
WHERE layer = $layer AND name IS NOT NULL
ORDER BY unit;
