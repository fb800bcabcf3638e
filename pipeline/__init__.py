"""actindex's library: what happens to one batch of images, with no cluster in sight.

    from actindex.pipeline.models import load_model
    from actindex.pipeline.recorder import ActivationRecorder
    loaded = load_model("resnet18")
    recorder = ActivationRecorder(loaded.module, ["layer4"], loaded.preprocessing)

Modules: `sources` (image lists), `decode` (bytes to pixels), `preprocess` (geometry), `models`,
`layers` (names and globs), `receptive_field`, `recorder` (forward + per-unit max/argmax), `topk`,
`schema` (one pyarrow schema per table), `writer` (atomic shard output), and for masks `unit_maps` (whole
maps of units, class activation maps) and `upsample` (a map over the original's pixels). Nothing here
imports ray.
"""

__version__ = "0.1.0"
