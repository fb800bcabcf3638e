"""One pyarrow schema per table of the index; writers, readers, SQL views and docs all use these.

    import actindex.pipeline.schema as schema
    schema.ACTIVATIONS.names   # ['image_id', 'layer', 'unit', 'act', 'y', 'x']
    print(schema.markdown(schema.TOPK))

Each field carries its description in the field metadata (key b"doc"); docs/tables.md is generated from it.
"""

from __future__ import annotations

import pyarrow as pa


def _field(name: str, type_: pa.DataType, doc: str, nullable: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc})


IMAGES = pa.schema(
    [
        _field(
            "image_id", pa.int64(), "stable id: 63-bit blake2b hash of the path relative to the dataset root"
        ),
        _field(
            "uri",
            pa.string(),
            "where the image was read: an absolute path, an object URL (s3://...), a tar member "
            "(tar:<container>#<member>) or a Parquet row (parquet:<container>#row=<n>&column=<c>); local "
            "path bytes that are not UTF-8 are stored as %XX, '%' as %25 (pipeline.sources.path_from_display "
            "reverses it; pipeline.storage.open_image_bytes opens any of them)",
        ),
        _field(
            "relpath",
            pa.string(),
            "path relative to the dataset root (for a tar member or Parquet row: <container "
            "relpath>#<member or key>), escaped like uri; image_id is its hash",
        ),
        _field(
            "width",
            pa.int32(),
            "width in pixels of the original in the frame boxes refer to: EXIF-upright (decode 'fast') or as "
            "stored (decode 'torchvision'); 0 if unreadable",
        ),
        _field("height", pa.int32(), "height of the original in the same frame; 0 if unreadable"),
        _field(
            "label", pa.string(), "class label (ImageFolder subfolder or list-file column)", nullable=True
        ),
        _field("status", pa.string(), "'ok', or 'error' when the image could not be decoded"),
        _field(
            "error",
            pa.string(),
            "'<kind>: <detail>' when status is 'error'; kinds: not an image, truncated, corrupt, too large, "
            "unreadable, unsupported, failed, crashed the decoder, out of memory",
            nullable=True,
        ),
    ]
)

LAYERS = pa.schema(
    [
        _field("layer", pa.string(), "named_modules() path of the layer"),
        _field("type", pa.string(), "module class name"),
        _field("channels", pa.int32(), "number of units"),
        _field("height", pa.int32(), "feature-map height (1 for (B, C) outputs such as logits)"),
        _field("width", pa.int32(), "feature-map width (1 for (B, C) outputs)"),
        _field("rf_size_y", pa.int32(), "receptive-field height in model-input pixels"),
        _field("rf_size_x", pa.int32(), "receptive-field width in model-input pixels"),
        _field("rf_jump_y", pa.int32(), "model-input pixels between vertically adjacent feature positions"),
        _field("rf_jump_x", pa.int32(), "model-input pixels between horizontally adjacent feature positions"),
        _field("rf_start_y", pa.int32(), "first model-input row seen by feature row 0 (negative: padding)"),
        _field("rf_start_x", pa.int32(), "first model-input column seen by feature column 0"),
        _field("rf_global", pa.bool_(), "every unit sees the whole input (e.g. (B, C) outputs)"),
        _field(
            "rf_global_context",
            pa.bool_(),
            "the box follows the spatial path, but units are also scaled by gates computed from the whole "
            "image (squeeze-excitation, treated as constants: index --rf-gates constant); missing in "
            "indexes made before it: false",
        ),
        _field("resize", pa.int32(), "preprocessing: shorter side resized to this many pixels"),
        _field("crop", pa.int32(), "preprocessing: side of the square center crop (the model input)"),
        _field("interpolation", pa.string(), "preprocessing: resize filter"),
        _field("mean", pa.list_(pa.float32()), "preprocessing: per-channel mean on [0, 1] pixels"),
        _field("std", pa.list_(pa.float32()), "preprocessing: per-channel std on [0, 1] pixels"),
        _field(
            "decode",
            pa.string(),
            "preprocessing: 'fast' (EXIF applied, large JPEGs drafted) or 'torchvision' (Pillow's full "
            "decode, EXIF ignored: torchvision's pixels exactly)",
        ),
    ]
)

ACTIVATIONS = pa.schema(
    [
        _field("image_id", pa.int64(), "images.image_id"),
        _field("layer", pa.string(), "layers.layer"),
        _field("unit", pa.int32(), "channel index within the layer"),
        _field("act", pa.float32(), "maximum of the unit's feature map over all positions"),
        _field("y", pa.int16(), "feature-map row of the maximum (first one on ties)"),
        _field("x", pa.int16(), "feature-map column of the maximum"),
    ]
)

TOPK = pa.schema(
    [
        _field("layer", pa.string(), "layers.layer"),
        _field("unit", pa.int32(), "channel index within the layer"),
        _field("rank", pa.int32(), "1 = highest act; ties broken by smaller image_id"),
        _field("image_id", pa.int64(), "images.image_id"),
        _field("act", pa.float32(), "the unit's maximum activation on this image"),
        _field("y", pa.int16(), "feature-map row of the maximum"),
        _field("x", pa.int16(), "feature-map column of the maximum"),
        _field("x0", pa.int32(), "receptive-field box of the peak in original-image pixels: left"),
        _field("y0", pa.int32(), "top"),
        _field("x1", pa.int32(), "right (exclusive), clipped to the image"),
        _field("y1", pa.int32(), "bottom (exclusive), clipped to the image"),
        _field(
            "ties",
            pa.int64(),
            "images of the whole index whose act for this unit equals this row's, this one included; where "
            "it exceeds the rows of that value in the list (always at rank k), image_id picked among equals",
        ),
    ]
)

UNITS = pa.schema(
    [
        _field("layer", pa.string(), "layers.layer"),
        _field("unit", pa.int32(), "channel index within the layer"),
        _field(
            "name",
            pa.string(),
            "what the unit stands for: its class, for the output layer of a model trained on named classes "
            "(the built-in efficientnet_lite0, torchvision and timm DEFAULT weights), or a line of a --names "
            "file; NULL where there is none",
            nullable=True,
        ),
    ]
)

CONTRIBUTIONS = pa.schema(
    [
        _field("layer", pa.string(), "layers.layer: the layer of the unit explained"),
        _field("unit", pa.int32(), "the unit explained (channel index within `layer`)"),
        _field("src_layer", pa.string(), "the lower layer (any module of the model, indexed or not)"),
        _field("src_unit", pa.int32(), "a channel of `src_layer`"),
        _field("rank", pa.int16(), "1 = the largest absolute score among src_layer's channels for this unit"),
        _field(
            "score",
            pa.float32(),
            "sum over positions of src_unit's activation x the gradient of the unit's value at its peak, "
            "averaged over the unit's top images; negative: the channel inhibits the unit",
        ),
        _field("share", pa.float32(), "score / the sum of absolute scores over every channel of src_layer"),
        _field("images", pa.int16(), "top images the score is averaged over"),
    ]
)

TABLES = {
    "images": IMAGES,
    "layers": LAYERS,
    "activations": ACTIVATIONS,
    "topk": TOPK,
    "units": UNITS,
    "contributions": CONTRIBUTIONS,
}

# activations/ and topk/ hold one directory per layer, `layer=<name>` (hive partitioning): their files
# have every column but `layer`, which readers take from the directory name.
PARTITIONED = ("activations", "topk")
# columns added after the first indexes: the files of an older index lack them, and readers see this value
ADDED_COLUMNS = {"layers": {"rf_global_context": False}}


# what the docs say of a table beyond its columns (besides the partitioned ones)
NOTES = {
    "contributions": "Files: `contributions/layer=<layer>/from=<src_layer>/group-NNNNN.<attempt>.parquet`, "
    "one per group of units, written by `actindex contributions` and listed by its markers "
    "(`_contributions/layer=<layer>/from=<src_layer>/`); the top N sources of each unit (`--top`).",
    "units": "File: `units.parquet`, one row per named unit. The `units` view lists every unit of every "
    "indexed layer, with a NULL name where the file has none (an index written before names existed has no "
    "file: every name is NULL).",
}


def in_files(name: str) -> pa.Schema:
    """The columns of table `name` as its Parquet files store them."""
    table = TABLES[name]
    return table.remove(table.get_field_index("layer")) if name in PARTITIONED else table


def markdown(schema: pa.Schema) -> str:
    """A markdown table of the schema's columns, types and descriptions."""
    lines = ["| column | type | description |", "| --- | --- | --- |"]
    for field in schema:
        doc = field.metadata[b"doc"].decode()
        nullable = " (nullable)" if field.nullable else ""
        lines.append(f"| `{field.name}` | {field.type}{nullable} | {doc} |")
    return "\n".join(lines)


def tables_markdown() -> str:
    """docs/tables.md: every table's columns (`python -m actindex.pipeline.schema > docs/tables.md`)."""
    source = "Generated from `pipeline/schema.py` by `python -m actindex.pipeline.schema`."
    parts = ["# Index tables", "", source, ""]
    for name, table in TABLES.items():
        parts += [f"## {name}", "", markdown(table), ""]
        if name in PARTITIONED:
            parts += [
                f"Files: `{name}/layer=<layer>/*.parquet`. `layer` is the directory's name (hive "
                "partitioning), not a column inside the files; every Parquet reader adds it.",
                "",
            ]
        if name in NOTES:
            parts += [NOTES[name], ""]
    return "\n".join(parts)


if __name__ == "__main__":
    print(tables_markdown(), end="")
