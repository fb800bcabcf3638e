-- The layers table, every column, in index order.
SELECT * FROM layers;
