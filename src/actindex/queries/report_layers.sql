-- Every indexed layer with what the report shows of it, in index (model) order.
SELECT layer, type, channels, height, width, rf_size_y, rf_size_x, rf_global, rf_global_context
FROM layers;
