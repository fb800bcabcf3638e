"""`actindex status`: what an index holds, what its dataset holds now, and what a rerun would do.

status = index_status("idx/")
status.shards_done, status.images_ok, status.new_images, status.missing_images
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from actindex.jobs.incremental import plan_work, read_state, shards_to_retry
from actindex.pipeline.containers import Columns
from actindex.pipeline.errors import UserError
from actindex.pipeline.layout import IndexLayout, marker_totals, topk_is_current
from actindex.pipeline.listing import Listing
from actindex.pipeline.lock import is_locked
from actindex.pipeline.sources import is_list_file
from actindex.pipeline.storage import user_errors
from actindex.queries.db import NotAnIndexError


@dataclass
class IndexStatus:
    root: str  # the index directory
    manifest: dict  # run.json ({} while the first job on the directory has not written it yet)
    shards_done: int  # shards with a completion marker
    images_ok: int  # indexed images with status ok
    images_error: int  # indexed images with status error
    activation_rows: int  # rows in activations
    bytes_on_disk: int  # size of the directory
    locked_by: str | None  # the job writing it now, if any
    dataset_images: int | None = None  # images in the dataset now (None if it cannot be listed)
    new_images: int | None = None  # dataset images not indexed yet
    missing_images: int | None = None  # indexed images no longer in the dataset
    shards_pending: int | None = None  # shards a rerun would write
    dataset_error: str | None = None  # why the dataset could not be listed
    notes: list[str] = field(default_factory=list)
    topk_current: bool = False  # topk/ merges exactly the completed shards
    topk_rows: int = 0
    retry_errors: int = 0  # error rows of a transient kind (an earlier actindex's) that a rerun retries


def index_status(index_dir: str | Path) -> IndexStatus:
    layout = IndexLayout(index_dir)
    with user_errors(layout.url):
        manifest = layout.read_manifest()
        locked_by = is_locked(layout)
    if manifest is None and locked_by is None:
        raise NotAnIndexError(f"{index_dir} is not an actindex index (no run.json)")
    if manifest is None:  # a job has just started here: it writes run.json once it has loaded the model
        return IndexStatus(layout.url, {}, 0, 0, 0, 0, layout.bytes_on_disk(), locked_by)
    markers = layout.completed_shards()
    images, ok, activation_rows = marker_totals(markers)
    status = IndexStatus(
        root=layout.url,
        manifest=manifest,
        shards_done=len(markers),
        images_ok=ok,
        images_error=images - ok,
        activation_rows=activation_rows,
        bytes_on_disk=layout.bytes_on_disk(),
        locked_by=locked_by,
        topk_current=topk_is_current(layout, markers),
    )
    if status.topk_current:
        status.topk_rows = layout.topk_rows()
    _compare_with_dataset(layout, manifest, status)
    return status


def _compare_with_dataset(layout: IndexLayout, manifest: dict, status: IndexStatus) -> None:
    try:
        columns = Columns(**(manifest["params"].get("columns") or {}))
        root = manifest["params"]["dataset_root"] if is_list_file(manifest["source"]) else None
        refs = Listing.build(manifest["source"], columns=columns, root=root)
    except (UserError, OSError) as exc:
        status.dataset_error = str(exc)
        return
    with refs:
        state = read_state(layout, repair=False)  # status never writes
        retry = shards_to_retry(layout, state, all_errors=False)
        work = plan_work(refs, state, layout, manifest["params"]["shard_size"], prune=False, retry=retry)
    status.retry_errors = work.retried_errors
    status.dataset_images = len(refs)
    status.new_images = work.new_images
    status.missing_images = len(work.missing)
    status.shards_pending = len(work.pending)
