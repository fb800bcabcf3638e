"""Unit names: what a unit stands for ("282 tiger cat"), kept in the index's `units` table.

    categories = model_categories("resnet50", "DEFAULT", module)   # torchvision's 1,000 ImageNet classes
    files = read_names_options(["classes.txt", "layer4=concepts.txt"])
    table = unit_names({"layer4": 2048, "fc": 1000}, ("fc",), categories, files, stored=None)

A layer's names come from the first of these that has them:
  1. a names file given this run: `--names FILE` names the units of the model's output layer, `--names
     LAYER=FILE` those of any indexed layer. UTF-8 text, one name per line: line i names unit i, a blank
     line leaves its unit unnamed; the file has exactly as many lines as the layer has units.
  2. the names the index holds already (a rerun keeps the names it does not replace);
  3. the model's classes, for its output layer (the layer whose output is the model's (B, C) output, with
     one unit per class), where the weights were trained on named classes: the built-in efficientnet_lite0
     (ImageNet), torchvision `--weights DEFAULT` (weights.meta["categories"]) and timm `--weights DEFAULT`
     (ImageNet subsets). Random weights, state-dict files and TorchScript models have no classes: their
     units have no name (NULL), never a made-up one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from actindex.pipeline import schema
from actindex.pipeline.errors import InvalidInputError, MissingInputError, UnknownNameError
from actindex.pipeline.model_args import BUILTIN_EFFICIENTNET
from actindex.pipeline.storage import is_url, read_bytes


@dataclass(frozen=True)
class NamesFile:
    """One --names option, read."""

    layer: str | None  # the layer it names; None: the model's output layer
    source: str  # the file (or URL) as given
    names: tuple[str | None, ...]  # line i names unit i; None for a blank line


def parse_names_option(option: str) -> tuple[str | None, str]:
    """'FILE' -> (None, FILE); 'LAYER=FILE' -> (LAYER, FILE). A local file or URL whose name has '=' is a
    FILE."""
    if "=" in option and not is_url(option) and not os.path.exists(option):
        layer, _, path = option.partition("=")
        if not layer or not path:
            raise InvalidInputError(f"--names {option!r}: give FILE or LAYER=FILE, e.g. fc=classes.txt")
        return layer, path
    return None, option


def read_names_options(options: Sequence[str]) -> list[NamesFile]:
    """Each --names option read: a missing or unreadable file, or two files for one layer, is refused."""
    files, seen = [], set()
    for option in options:
        layer, path = parse_names_option(option)
        if layer in seen:
            which = f"layer {layer!r}" if layer else "the output layer"
            raise InvalidInputError(f"--names gives two files for {which}; keep one")
        seen.add(layer)
        files.append(NamesFile(layer, path, _read_lines(path)))
    return files


def _read_lines(path: str) -> tuple[str | None, ...]:
    missing = f"--names {path}: no such file (a text file, one unit name per line)"
    if not is_url(path) and not os.path.isfile(path):
        raise MissingInputError(missing)
    try:
        text = read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInputError(f"--names {path}: not UTF-8 text (one unit name per line)") from None
    except FileNotFoundError:
        raise MissingInputError(missing) from None
    lines = tuple(line.strip() or None for line in text.splitlines())
    if not any(lines):
        raise InvalidInputError(f"--names {path}: the file names no unit (one name per line)")
    return lines


def model_categories(model: str, weights: str, module) -> tuple[str, ...] | None:
    """The class names of the model's outputs, where its weights were trained on named classes; `weights`
    is what pipeline.models.load_model loaded ("builtin", "DEFAULT", "random", a file, ...)."""
    import torchvision

    if model == BUILTIN_EFFICIENTNET and weights == "builtin":
        # ImageNet-1k in torchvision's wording (the list every torchvision ImageNet weight carries)
        return tuple(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
    if weights != "DEFAULT":
        return None
    if model.startswith("timm:"):
        return _timm_categories(module)
    if model in torchvision.models.list_models():
        categories = torchvision.models.get_model_weights(model).DEFAULT.meta.get("categories")
        return tuple(categories) if categories else None
    return None


def _timm_categories(module) -> tuple[str, ...] | None:
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(module)
    if subset is None:
        return None
    info = ImageNetInfo(subset)
    # "tench, Tinca tinca": the first of the synonyms, as torchvision words them
    return tuple(info.index_to_description(i).split(",")[0].strip() for i in range(info.num_classes()))


def unit_names(
    channels: dict[str, int],
    output_layers: Sequence[str],
    categories: Sequence[str] | None,
    files: Sequence[NamesFile],
    stored: pa.Table | None = None,
) -> pa.Table:
    """The units table (schema.UNITS, named units only) of an index whose layers have `channels` units:
    per layer the names of its file, else those `stored` in the index, else the model's `categories` for
    its output layers (`output_layers`, as pipeline.layers.output_layers finds them)."""
    named: dict[str, dict[int, str]] = {}
    if categories is not None:
        for layer in output_layers:
            if channels.get(layer) == len(categories):
                named[layer] = dict(enumerate(categories))
    named.update(_stored(stored, channels))
    for names_file in files:
        for layer in _layers_named(names_file, channels, output_layers):
            named[layer] = {unit: name for unit, name in enumerate(names_file.names) if name is not None}
    rows = [
        {"layer": layer, "unit": unit, "name": named[layer][unit]}
        for layer in channels
        for unit in sorted(named.get(layer, {}))
    ]
    return pa.Table.from_pylist(rows, schema=schema.UNITS)


def _stored(stored: pa.Table | None, channels: dict[str, int]) -> dict[str, dict[int, str]]:
    named: dict[str, dict[int, str]] = {}
    for row in stored.to_pylist() if stored is not None else []:
        if row["name"] is not None and 0 <= row["unit"] < channels.get(row["layer"], 0):
            named.setdefault(row["layer"], {})[row["unit"]] = row["name"]
    return named


def _layers_named(names: NamesFile, channels: dict[str, int], output_layers: Sequence[str]) -> list[str]:
    """The indexed layers a names file names; refuses an unknown layer and a count that does not fit."""
    indexed = ", ".join(channels)
    if names.layer is not None and names.layer not in channels:
        raise UnknownNameError(
            f"--names {names.layer}={names.source}: layer {names.layer!r} is not indexed (layers: {indexed})"
        )
    layers = [names.layer] if names.layer is not None else [n for n in output_layers if n in channels]
    if not layers and not output_layers:
        raise InvalidInputError(
            f"--names {names.source} names the model's output layer, but the model's output is not one "
            "(B, C) tensor; name the layer: --names LAYER=FILE"
        )
    if not layers:
        raise InvalidInputError(
            f"--names {names.source} names the model's output layer ({', '.join(output_layers)}), which is "
            f"not indexed (layers: {indexed}); add it to --layers, or name a layer: --names LAYER=FILE"
        )
    for layer in layers:
        if len(names.names) != channels[layer]:
            raise InvalidInputError(
                f"--names {names.source}: {len(names.names)} lines for the {channels[layer]} units of layer "
                f"{layer!r}; write one name per line, line i naming unit i (a blank line: no name)"
            )
    return layers
