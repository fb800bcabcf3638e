-- Every indexed layer, in index order.
SELECT layer, channels FROM layers;
