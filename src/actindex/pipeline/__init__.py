"""actindex's library: what happens to one batch of images, with no cluster in sight.

    from actindex.pipeline.models import load_model
    from actindex.pipeline.recorder import ActivationRecorder
    loaded = load_model("resnet18")
    recorder = ActivationRecorder(loaded.module, ["layer4"], loaded.preprocessing)

Modules: `sources` and `listing` (image lists), `decode` (bytes to pixels), `preprocess` (geometry),
`models`, `layers` (names and globs), `receptive_field`, `recorder` (forward + per-unit max/argmax), `topk`,
`schema` (one pyarrow schema per table), `layout` (the index on disk: paths, atomic writes, markers, the
topk record, the lock state), `retry` (transient failures), and for masks `unit_maps` (whole maps of units,
class activation maps) and `upsample` (a map over the original's pixels). Nothing here imports ray, and
torch only inside the functions that use it.
"""
