"""Setting the topk table aside survives a kill at any step: a table is used as a base only with its own
record of the shards it merged, so no shard's top-k can be merged twice."""

from __future__ import annotations

import json

import pytest

from actindex.jobs.finalize import set_topk_aside
from actindex.pipeline.layout import IndexLayout


def _table(layout: IndexLayout, folder, shards: list[str] | None, record) -> None:
    path = layout.topk_file("l", folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(shards))  # stands for the table: which shards it merged
    if record is not None:
        record.write_text(json.dumps({"shards": shards}))


def _state(layout: IndexLayout) -> dict:
    def read(path):
        return json.loads(path.read_text()) if path.is_file() else None

    return {
        "topk": read(layout.topk_file("l")),
        "record": read(layout.topk_covers),
        "base": read(layout.topk_file("l", layout.topk_base)),
        "base_record": read(layout.topk_base_covers),
    }


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


STEPS = ("put", "delete", "delete_tree", "copy_tree")  # what set_topk_aside changes the index with


def _killed_after(monkeypatch, layout: IndexLayout, steps: int) -> None:
    """Make the layout's `steps`-th change the last one: the next raises Killed."""
    done = []
    for name in STEPS:
        real = getattr(layout, name)

        def step(*args, _real=real):
            if len(done) == steps:
                raise Killed
            done.append(1)
            return _real(*args)

        monkeypatch.setattr(layout, name, step)


@pytest.mark.parametrize("steps", [None, 0, 1, 2, 3, 4, 5])
def test_a_complete_table_is_set_aside_with_its_record_whenever_it_is_killed(tmp_path, monkeypatch, steps):
    layout = IndexLayout(tmp_path)
    _table(layout, layout.topk_dir, ["a", "b"], layout.topk_covers)
    if steps is not None:  # killed after `steps` changes: a table or a base is still whole with its record
        with monkeypatch.context() as patch:
            _killed_after(patch, layout, steps)
            with pytest.raises(Killed):
                set_topk_aside(layout)
        state = _state(layout)
        assert state["record"] is None or state["topk"] == ["a", "b"]
        assert state["base_record"] is None or state["base"] == ["a", "b"]
        assert state["record"] is not None or state["base_record"] is not None
    set_topk_aside(layout)  # the rerun
    assert _state(layout) == {
        "topk": None,
        "record": None,
        "base": ["a", "b"],
        "base_record": {"shards": ["a", "b"]},
    }


def test_killed_after_the_new_table_but_before_the_old_one_was_removed(tmp_path):
    layout = IndexLayout(tmp_path)
    _table(layout, layout.topk_dir, ["a", "b", "c"], layout.topk_covers)  # the new table, complete
    layout.topk_base_covers.write_text(json.dumps({"shards": ["a", "b"]}))  # the old record, left behind
    set_topk_aside(layout)  # the new table becomes the base, with its own record
    state = _state(layout)
    assert state["base"] == ["a", "b", "c"] and state["base_record"] == {"shards": ["a", "b", "c"]}


def test_a_table_killed_while_being_written_is_dropped_and_the_base_kept(tmp_path):
    layout = IndexLayout(tmp_path)
    _table(layout, layout.topk_base, ["a"], layout.topk_base_covers)
    _table(layout, layout.topk_dir, ["a", "b"], None)  # no record: not finished
    set_topk_aside(layout)
    assert _state(layout) == {"topk": None, "record": None, "base": ["a"], "base_record": {"shards": ["a"]}}
