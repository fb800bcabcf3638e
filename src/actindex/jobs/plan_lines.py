"""What a run will compute, said before it computes anything: the lines `actindex index` prints on stderr
(when its progress is shown) once the model is loaded and the run spec resolved, before the first image is
decoded.

    for line in plan_lines(spec, infos, rfs, notes):
        print(line, file=sys.stderr)

    actindex: model resnet18, pretrained weights (DEFAULT), sha256 5c1a3b9e2f41
    actindex: layer layer4: Sequential, 512 units, feature map 7x7, receptive field 435x435
    actindex: decode fast on the CPU (Pillow); preprocessing: resize 256, crop 224, bilinear, mean 0.485,...
"""

from __future__ import annotations

from collections.abc import Sequence

from actindex.jobs.spec import RunSpec
from actindex.pipeline.geometry import LayerInfo, ReceptiveField
from actindex.pipeline.model_args import weights_text

PREFIX = "actindex: "  # as the progress lines of a batch log


def plan_lines(
    spec: RunSpec,
    infos: dict[str, LayerInfo],
    rfs: dict[str, ReceptiveField],
    notes: Sequence[str] = (),
) -> list[str]:
    """The model and its weights (hash: 12 hex), each layer (type, units, feature map, receptive field),
    the decoding and the preprocessing, then `notes` (globs that matched containers)."""
    weights = f"{weights_text(spec.model, spec.weights)}, sha256 {spec.weights_sha256[:12]}"
    lines = [f"model {spec.model}, {weights}"]
    lines += [_layer_line(infos[layer], rfs[layer]) for layer in spec.layers]
    lines.append(f"{_decode_text(spec)}; preprocessing: {_preprocessing_text(spec)}")
    lines += [f"note: {note}" for note in notes]
    return [PREFIX + line for line in lines]


def _layer_line(info: LayerInfo, rf: ReceptiveField) -> str:
    field = "the whole image" if rf.is_global else f"{rf.size_y}x{rf.size_x}"
    return (
        f"layer {info.name}: {info.type}, {info.channels:,} units, feature map {info.height}x{info.width}, "
        f"receptive field {field}"
    )


def _decode_text(spec: RunSpec) -> str:
    where = f"on {spec.device} (nvjpeg)" if spec.device_decode else "on the CPU (Pillow)"
    return f"decode {spec.preprocessing.decode} {where}"


def _preprocessing_text(spec: RunSpec) -> str:
    prep = spec.preprocessing
    return (
        f"resize {prep.resize}, crop {prep.crop}, {prep.interpolation}, mean {_numbers(prep.mean)}, "
        f"std {_numbers(prep.std)}"
    )


def _numbers(values: Sequence[float]) -> str:
    return ",".join(f"{value:g}" for value in values)
