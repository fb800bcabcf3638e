-- One layer's row of the layers table. Parameters: $layer (text).
SELECT layer, type, channels, height, width, rf_size_y, rf_size_x, rf_jump_y, rf_jump_x
FROM layers
WHERE layer = $layer;
