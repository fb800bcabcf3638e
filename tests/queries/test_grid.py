"""Grid captions: the layer, the unit and its name where the index has one."""

from __future__ import annotations

import pyarrow as pa
import pytest

from actindex.queries import grid
from actindex.queries.db import top_images


def test_a_long_name_keeps_both_ends_in_its_caption():
    """An ImageNet file name cut at its end keeps only the synset id, the part no reader knows."""
    from PIL import ImageFont

    font = ImageFont.load_default(size=11)
    name = "n02099601_golden_retriever.JPEG"
    fitted = grid._fit(name, 92, font)
    assert fitted.startswith("n02099") and fitted.endswith(".JPEG") and "…" in fitted, fitted
    assert font.getlength(fitted) <= 92 < font.getlength(name)
    assert grid._fit("short.jpg", 92, font) == "short.jpg"


def test_a_units_caption_is_its_layer_number_and_name():
    assert grid.caption_lines("classifier", 282, "tiger cat") == ["classifier", "unit 282", "tiger cat"]
    assert grid.caption_lines("relu1", 0, None) == ["relu1", "unit 0"]  # no name: none made up


@pytest.mark.parametrize(
    ("layout", "caption"), [("row", "relu1\nunit 0\nred square"), ("block", "relu1 · unit 0 · red square")]
)
def test_sheets_caption_each_unit_with_its_name(planted_index, monkeypatch, layout, caption):
    _, con, _ = planted_index
    rows = top_images(con, "relu1", [0, 1], 2)
    names = pa.array(["red square" if unit == 0 else None for unit in rows.column("unit").to_pylist()])
    rows = rows.set_column(rows.column_names.index("name"), "name", names)
    drawn = []
    real = grid._text
    monkeypatch.setattr(
        grid, "_text", lambda image, xy, text, *a: drawn.append(text) or real(image, xy, text, *a)
    )
    grid.render_grid(rows, tile=96, layout=layout)
    assert caption in drawn
    assert ("relu1\nunit 1" if layout == "row" else "relu1 · unit 1") in drawn  # unit 1 has no name
