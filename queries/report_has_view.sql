-- Whether the connection has a table or view called $view (views other work adds, such as `units`).
SELECT count(*) > 0 AS present
FROM information_schema.tables
WHERE table_name = $view;
