"""`actindex grid --mask highlight|heat` on the planted index: the red square stays, the background goes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.jobs.test_cli import invoke

LABEL_W, TILE = 64 + 16, 64
# relu2's best crop of red0 is its 19-pixel box (28, 16)-(47, 35) scaled by 64/19: the red square
# (30, 20)-(42, 32) covers tile pixels 7-47 across and 13-54 down; the tile's corner 60, 60 is grey
SQUARE, BACKGROUND = (32, 32), (60, 60)


def _grid(out, tmp_path, *mask: str):
    png = tmp_path / f"grid{'-'.join(mask)}.png"
    result = invoke(
        "grid", out, "--layer", "relu2", "--units", "0", "--k", "1", "--tile", TILE, "--out", png, *mask
    )
    assert result.exit_code == 0, result.output
    sheet = np.asarray(Image.open(png).convert("RGB"), dtype=np.int64)
    return sheet, result.output


def _pixel(sheet: np.ndarray, xy: tuple[int, int]) -> np.ndarray:
    return sheet[2 + xy[1], LABEL_W + xy[0]]


@pytest.fixture(scope="module")
def plain(planted_cli_index, tmp_path_factory):
    out, _ = planted_cli_index
    sheet, _ = _grid(out, tmp_path_factory.mktemp("plain"))
    return sheet


def test_highlight_keeps_the_square_and_dims_the_background(planted_cli_index, plain, tmp_path):
    out, _ = planted_cli_index
    sheet, output = _grid(out, tmp_path, "--mask", "highlight", "--trust-code")
    assert "note" not in output
    assert (_pixel(sheet, SQUARE) == _pixel(plain, SQUARE)).all() and _pixel(plain, SQUARE)[0] > 200
    assert np.abs(_pixel(sheet, BACKGROUND) - np.round(_pixel(plain, BACKGROUND) / 3)).max() <= 1
    assert sheet.shape == plain.shape


def test_heat_paints_the_square_red_and_the_background_blue(planted_cli_index, plain, tmp_path):
    out, _ = planted_cli_index
    sheet, _ = _grid(out, tmp_path, "--mask", "heat", "--trust-code")
    r, g, b = _pixel(sheet, SQUARE)
    assert r > 150 and g < 30 and b < 30  # red under the map's hot end
    r, g, b = _pixel(sheet, BACKGROUND)
    assert b > r + 40 and b > g + 40  # grey under its cold end
    assert not (sheet == plain).all()


def test_mask_errors_are_one_line(planted_cli_index, tmp_path):
    out, _ = planted_cli_index
    png = tmp_path / "x.png"
    args = ("grid", out, "--layer", "relu2", "--units", "0", "--out", png, "--mask", "highlight")
    result = invoke(*args)  # the index's model is python: code
    assert result.exit_code == 2 and "--trust-code" in result.output and not png.exists()
    result = invoke(*args, "--trust-code", "--mask-threshold", "0")
    assert result.exit_code == 2 and "--mask-threshold" in result.output
    result = invoke(
        "grid", out, "--layer", "head", "--units", "0", "--out", png, "--mask", "heat", "--trust-code"
    )
    assert (
        result.exit_code == 2 and "without --mask" in result.output and len(result.output.splitlines()) == 1
    )


def test_a_report_whose_masks_need_trust_is_refused_before_touching_the_last(planted_cli_index, tmp_path):
    out, _ = planted_cli_index
    site = tmp_path / "site"
    args = ("report", out, "--out", site, "--layers", "relu2", "--units", "0", "--k", "1", "--no-progress")
    assert invoke(*args, "--trust-code").exit_code == 0
    before = sorted(p.relative_to(site) for p in site.rglob("*"))
    result = invoke(*args)  # masks load the index's python: model, which runs its code
    assert result.exit_code == 2 and "--trust-code" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert sorted(p.relative_to(site) for p in site.rglob("*")) == before  # the last report, whole
