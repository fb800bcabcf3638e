-- Images that could not be decoded, first $limit by path. Parameters: $limit (integer).
SELECT relpath, error
FROM images
WHERE status = 'error'
ORDER BY relpath
LIMIT $limit;
