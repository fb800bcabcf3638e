"""The `actindex` command line: thin Typer commands that build configs and call jobs/ and queries/.

    actindex demo --out demo/
    actindex layers resnet50
    actindex index PHOTOS/ --model resnet50 --layers 'layer*' --k 100 --out idx/    # pretrained weights
    actindex top idx/ --layer layer4 --unit 17 --k 9
    actindex grid idx/ --layer layer4 --units 0-15 --k 9 --out layer4.png
    actindex report idx/ --out site/            # a static site: a page per layer, a card per unit
    actindex sql idx/ "SELECT layer, count(*) FROM activations GROUP BY 1"
    actindex sql idx/ --compare idx_b/ "SELECT * FROM topk_drift('layer4', k := 9)"   # the catalog's macros

Heavy modules (torch, ray, duckdb) are imported inside the commands so `--help` stays fast.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated

import typer

from actindex.jobs.benchmark import BenchConfig, host_rows, run_bench, run_host_bench, table_rows
from actindex.jobs.cli_options import annotated, fail, with_config
from actindex.jobs.contributions import ContributionsRequest, run_contributions
from actindex.jobs.demo import run_demo
from actindex.jobs.indexing import run_index
from actindex.jobs.progress import EVERY, PROGRESS_EVERY, ReportProgress
from actindex.jobs.query_bench import build_synthetic_index, time_queries
from actindex.jobs.spec import RF_GATES, Executor, IndexRequest, RfGates
from actindex.jobs.stages import summary_line
from actindex.jobs.status import index_status
from actindex.pipeline.errors import InvalidInputError, UserError
from actindex.pipeline.layers import describe_all
from actindex.pipeline.model_args import MODEL, RANDOM, TRUST_CODE, brings_own_weights
from actindex.pipeline.models import load_model
from actindex.pipeline.options import options
from actindex.pipeline.preprocess import Decode, Preprocessing
from actindex.pipeline.topk import K
from actindex.queries.catalog import label_notes, macros, stopped
from actindex.queries.db import INDEX, IncompleteIndexError, arrow_table, connect, unit_tops
from actindex.queries.grid import unit_list
from actindex.queries.report import ReportConfig, plan_report, write_report
from actindex.queries.sheet import GridOptions, unit_sheet

app = typer.Typer(
    help="actindex: which images most excite unit k in layer L? Index a dataset, query it with SQL, draw grids.",  # noqa: E501
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# options that commands without a config take alone (a config's options come with it: jobs.cli_options)
IndexDir = annotated(INDEX, str)
LayerOpt = Annotated[str, typer.Option("--layer", "-l", help="Layer name as indexed (see the layers table).")]
KOpt = annotated(K, int)
RfGatesOpt = annotated(RF_GATES, RfGates)
ModelArg = annotated(dataclasses.replace(MODEL, positional=True), str)
TrustCodeOpt = annotated(TRUST_CODE, bool)
ResizeOpt = annotated(options(Preprocessing)["resize"], int | None)  # actindex bench's overrides
CropOpt = annotated(options(Preprocessing)["crop"], int | None)
DecodeOpt = annotated(options(Preprocessing)["decode"], Decode | None)
ReportEveryOpt = annotated(
    dataclasses.replace(
        PROGRESS_EVERY,
        help="With no terminal: seconds between progress lines (model images, crops, crops/s, ETA).",
    ),
    float,
)


def _console():
    from rich.console import Console

    return Console(width=200 if not sys.stdout.isatty() else None)


def parse_units(text: str) -> list[int]:
    """'0-3,7' -> [0, 1, 2, 3, 7] (actindex.queries.grid.unit_list), a bad list as typer's error."""
    try:
        return unit_list(text)
    except InvalidInputError as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command()
@with_config
def index(
    request: IndexRequest,
    strict: Annotated[bool, typer.Option(help="Exit with code 1 if any image failed to decode.")] = False,
) -> None:
    """Index images: per image and unit, the max activation, where it peaked and its receptive-field box.

    Rerunning the same command resumes: completed shards are kept, new images are added.
    """

    try:
        summary = run_index(request)
    except UserError as exc:
        raise fail(exc) from None
    except KeyboardInterrupt:
        typer.echo(
            f"Interrupted: completed shards are kept; rerun the same command to resume into {request.out}",
            err=True,
        )
        raise typer.Exit(code=130) from None
    _print_summary(summary)
    if strict and summary.failed:
        raise typer.Exit(code=1)


def _print_summary(summary) -> None:
    failed_hint = f" (see: actindex sql {summary.out} \"select * from images where status='error'\")"
    typer.echo(
        f"{summary.images} images: {summary.indexed} indexed, {summary.failed} failed"
        + (failed_hint if summary.failed else "")
        + f"; {summary.new_images} new this run"
        + ("; random weights (--weights random): the units of an untrained network" * summary.random_weights)
    )
    if summary.missing:
        typer.echo(f"{summary.missing} indexed images are no longer in the dataset; --prune drops them")
    if summary.pruned:
        again = (
            f" (and indexed the {summary.reindexed} others of their shards again)"
            if summary.reindexed
            else ""
        )
        typer.echo(f"pruned {summary.pruned} images that left the dataset{again}")
    if summary.listing_errors:
        typer.echo(
            f"{summary.listing_errors} folders could not be listed; their images are missing (see run.json)"
        )
    if summary.retried_errors:
        typer.echo(
            f"retried {summary.retried_errors} error rows of earlier runs (their shards were indexed again)"
        )
    if summary.retried_requests or summary.failed_shard_attempts or summary.recorded_after_retries:
        typer.echo(
            retry_line(
                summary.retried_requests, summary.failed_shard_attempts, summary.recorded_after_retries
            )
        )
    typer.echo(
        f"{summary.activation_rows:,} activation rows, {summary.topk_rows:,} top-k rows; "
        f"{summary.bytes_on_disk / 1e6:.1f} MB in {summary.out}; {summary.seconds:.1f} s "
        f"({summary.images_per_second:.1f} new images/s)"
        + (
            f"; {summary.shards_done_before} shards reused from an earlier run"
            if summary.shards_done_before
            else ""
        )
    )
    if summary.stages:
        typer.echo(summary_line(summary.stages))


def retry_line(retried: int, failed: int, recorded: int) -> str:
    """What transient failures cost a run (pipeline.retry), for the summary and `actindex status`."""
    text = f"transient failures: {retried:,} requests retried, {failed} shard attempts failed and ran again"
    if recorded:
        text += f", {recorded} images recorded 'unreadable after retries' (--retry-errors retries them)"
    return text


@app.command()
@with_config
def contributions(request: ContributionsRequest) -> None:
    """Which units of a lower layer build each unit of a layer: activation x gradient per channel, averaged
    over each unit's top images; the strongest (--top) kept in the index's contributions table.

    Rerunning the same command resumes; query the table with `actindex sql IDX "SELECT * FROM
    built_from('layer4', 17)"` or actindex.open(IDX).contributions('layer4', 17).
    """
    try:
        summary = run_contributions(request)
    except UserError as exc:
        raise fail(exc) from None
    except KeyboardInterrupt:
        typer.echo("Interrupted: completed groups are kept; rerun the same command to resume", err=True)
        raise typer.Exit(code=130) from None
    done = "nothing to do" if not summary.computed else f"{summary.computed} groups computed"
    typer.echo(
        f"contributions of {summary.layer} from {summary.source}: {summary.units} units in "
        f"{summary.groups} groups ({done}, {summary.reused} kept from an earlier run; "
        f"{summary.backward_passes} backward passes); {summary.seconds:.1f} s"
    )
    if summary.failed_images:
        typer.echo(f"{summary.failed_images} top images could not be decoded now and were left out")


@app.command()
def layers(
    model: ModelArg,
    weights: Annotated[
        str | None,
        typer.Option(
            help="DEFAULT, a .pth state dict or random. Default: random (shapes and receptive fields do not "
            "depend on the weights, and nothing is downloaded)."
        ),
    ] = None,
    pattern: Annotated[str, typer.Option(help="Only layers matching this glob.")] = "**",
    input_size: Annotated[
        int | None, typer.Option(help="Model input side in pixels (default: the model's crop).")
    ] = None,
    trust_code: TrustCodeOpt = False,
    rf_gates: RfGatesOpt = RfGates.constant,
) -> None:
    """List every named layer: type, channels, output size, receptive field size and stride; "context"
    marks layers scaled by squeeze-excitation gates (their boxes treat the gates as constants). Modules
    whose output is not a feature map (B, C, H, W) or a vector (B, C) are left out: lines say which, why."""
    from rich.table import Table

    try:
        weights = RANDOM if weights is None and not brings_own_weights(model) else weights
        loaded = load_model(model, weights, trust_code)
        size = input_size or loaded.preprocessing.crop
        rows, skipped = describe_all(loaded.module, pattern, (size, size), rf_gates.value)
    except UserError as exc:
        raise fail(exc) from None
    table = Table(title=f"{model}: layers at input {size}x{size}")
    for column in ("layer", "type", "channels", "output", "rf size", "rf jump", "rf start", "context"):
        table.add_column(column, justify="left" if column in ("layer", "type") else "right")
    for info, rf in rows:
        output = f"{info.height}x{info.width}" if rf is None or not rf.is_global else "global"
        if rf is None:
            table.add_row(info.name, info.type, str(info.channels), output, "-", "-", "-", "-")
        else:
            table.add_row(
                info.name, info.type, str(info.channels), output,
                f"{rf.size_y}x{rf.size_x}", f"{rf.jump_y}x{rf.jump_x}", f"{rf.start_y},{rf.start_x}",
                "global" if rf.global_context else "-",
            )  # fmt: skip
    _console().print(table)
    for line in skipped:
        typer.echo(line)


@app.command()
def top(
    index_dir: IndexDir,
    layer: LayerOpt,
    unit: Annotated[int, typer.Option("--unit", "-u", help="Unit (channel) number.")],
    k: KOpt = 9,
) -> None:
    """Show the top-k images for one unit: activation, ties, label, file and receptive-field box.

    Answers from the topk table; beyond its k (or while it is being rebuilt) from activations, exactly."""
    from rich.table import Table

    tops = _unit_tops(index_dir, layer, [unit], k)
    rows = tops.rows.to_pylist()
    name = f' "{rows[0]["name"]}"' if rows and rows[0]["name"] else ""
    weights = "; random weights" if tops.random_weights else ""
    table = Table(title=f"top {len(rows)} images for {layer} unit {unit}{name} (from {tops.source}{weights})")
    for column in ("rank", "act", "ties", "label", "file", "box (x0,y0,x1,y1)"):
        table.add_column(column, justify="right" if column in ("rank", "act", "ties") else "left")
    for row in rows:
        box = f"{row['x0']},{row['y0']},{row['x1']},{row['y1']}"
        ties = f"{row['ties']:,}" if row["ties"] > 1 else ""
        table.add_row(
            str(row["rank"]), f"{row['act']:.4g}", ties, str(row["label"] or ""), row["relpath"], box
        )
    _console().print(table)
    if len(rows) < k:
        typer.echo(f"the index has {len(rows)} ok images for this unit, fewer than k={k}")
    for note in tops.notes:
        typer.echo(f"note: {note}")


def _unit_tops(index_dir: str, layer: str, units: list[int], k: int):
    """actindex.queries.db.unit_tops, with its errors as one line: exit 1 when the index cannot answer yet."""

    try:
        return unit_tops(index_dir, layer, units, k)
    except IncompleteIndexError as exc:
        raise fail(exc, code=1) from None
    except UserError as exc:
        raise fail(exc) from None


@app.command()
@with_config
def grid(
    index_dir: IndexDir,
    layer: LayerOpt,
    units: Annotated[
        str, typer.Option("--units", "-u", help="Units, e.g. 0-15 or 285,1,207 (drawn in this order).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")],
    options: GridOptions,
) -> None:
    """Draw the receptive-field crops of each unit's top-k images into one PNG sheet.

    Each tile shows rank, activation, file name and label; '=N' marks an act that N images share.
    With --mask, each crop shows the unit's map on it (recomputed; class activation maps for logits)."""

    try:
        sheet = unit_sheet(index_dir, layer, parse_units(units), options)
    except IncompleteIndexError as exc:
        raise fail(exc, code=1) from None
    except UserError as exc:
        raise fail(exc) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.image.save(out)
    typer.echo(f"wrote {out} ({sheet.image.width}x{sheet.image.height}, {sheet.units} units)")
    for note in sheet.notes:
        typer.echo(f"note: {note}")


@app.command()
@with_config
def report(
    config: ReportConfig,
    progress: Annotated[
        bool, typer.Option(help="Show a progress bar; with no terminal (batch logs), progress lines.")
    ] = True,
    progress_every: ReportEveryOpt = EVERY,
) -> None:
    """Write a static site of the index: run facts, one page per layer with a card per unit (top-k crops,
    histogram of its maxima, label purity), sortable; opens from disk with no server or network."""

    try:
        plan = plan_report(config)  # every refusal comes here, before anything is drawn or written
        typer.echo(f"actindex: {plan.describe()}", err=True)
        counts = (plan.mask_images, plan.crops, progress_every, plan.maps, plan.maps_label)
        with ReportProgress(progress, *counts) as shown:
            summary = write_report(plan, shown.advance)
    except IncompleteIndexError as exc:
        raise fail(exc, code=1) from None
    except UserError as exc:
        raise fail(exc) from None
    drawn = ", ".join(f"{layer} {n:,} units" for layer, n in summary.units.items())
    site = config.out / "index.html"
    maps = f", {summary.maps:,} {plan.maps_label}" if summary.maps else ""
    typer.echo(f"wrote {site}: {drawn}; {summary.crops:,} crops{maps} in {summary.seconds:.1f} s")
    for note in summary.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"open: {site.resolve().as_uri()}")


def _sql_help() -> str:
    """The sql command's help: what it does, then one line per catalog macro (from queries/catalog/*.sql)."""

    lines = [f"- {m.signature}: {m.summary}" for m in macros()]
    return (
        "Run any SQL query against the index's views (images, layers, activations, topk, units); print a "
        "table or write CSV/Parquet.\n\nThe analysis catalog, table macros on every connection (SELECT * "
        "FROM label_selectivity('layer4', k := 20); parameters and columns: queries/catalog/*.sql):\n\n"
        + "\n".join(lines)
    )


@app.command(help=_sql_help())
def sql(
    index_dir: IndexDir,
    query: Annotated[
        str,
        typer.Argument(
            help="SQL over the views images, layers, activations, topk, units (and other.* with --compare), "
            "with the catalog's macros."
        ),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the result to .csv or .parquet.")
    ] = None,
    limit: Annotated[int, typer.Option(help="Rows to print (files get every row).")] = 50,
    compare: Annotated[
        str | None,
        typer.Option(
            help="A second index (of the same images) whose views are other.topk, other.images, ...: for "
            "topk_drift."
        ),
    ] = None,
) -> None:
    import duckdb

    try:
        con = connect(index_dir, compare=compare)
        result = con.sql(query)
        table = arrow_table(result) if result is not None else None
        notes = label_notes(con) if "label_selectivity" in query.lower() else []
    except duckdb.InvalidInputException as exc:  # a catalog check that says what to do
        raise fail(stopped(exc)) from None
    except (UserError, duckdb.Error) as exc:
        raise fail(exc) from None
    if table is None:
        typer.echo("ok")
    elif out is not None:
        _write_result(table, out)
        typer.echo(f"wrote {table.num_rows} rows to {out}")
    else:
        _print_arrow(table, limit)
    for note in notes:
        typer.echo(f"note: {note}")


def _write_result(table, out: Path) -> None:
    import pyarrow.csv
    import pyarrow.parquet

    if out.suffix == ".csv":
        pyarrow.csv.write_csv(table, out)
    elif out.suffix == ".parquet":
        pyarrow.parquet.write_table(table, out)
    else:
        raise fail(UserError(f"--out {out}: use a .csv or .parquet file name"))


def _print_arrow(table, limit: int) -> None:
    from rich.table import Table

    view = Table(
        caption=f"{table.num_rows} rows" + (f" (first {limit} shown)" if table.num_rows > limit else "")
    )
    for name in table.column_names:
        view.add_column(name)
    for row in table.slice(0, limit).to_pylist():
        view.add_row(
            *("" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v) for v in row.values())
        )
    _console().print(view)


@app.command()
def status(index_dir: IndexDir) -> None:
    """What an index holds: manifest, shards done/pending, images ok/error/new/missing, size on disk."""

    try:
        st = index_status(index_dir)
    except UserError as exc:
        raise fail(exc) from None
    if not st.manifest:
        typer.echo(f"index       {st.root}: being created\nwriting     {st.locked_by}")
        return
    params, manifest = st.manifest["params"], st.manifest
    state = manifest["status"]
    if state == "running" and not st.locked_by:
        state = "interrupted (the job stopped before its end)"
    elif state == "stopped":
        state = f"stopped: {manifest.get('stopped', '?')}"
    if st.topk_current:
        topk = f"{st.topk_rows:,} rows, k={params['k']}"
    elif st.locked_by:
        topk = "being rebuilt: the job writing the index writes it when it ends"
    else:
        topk = "not built: rerun the same index command to resume and rebuild it"
    lines = [
        f"index       {st.root}  ({st.bytes_on_disk / 1e6:.1f} MB)",
        f"model       {params['model']}  weights {params['weights']} ({params['weights_sha256'][:12]})",
        f"layers      {', '.join(params['layers'])}  k={params['k']}",
        f"dataset     {manifest['source']}",
        f"last run    {state}, {manifest['started']} to {manifest['finished'] or '-'}",
        f"shards      {st.shards_done} done"
        + (f", {st.shards_pending} pending" if st.shards_pending else ""),
        f"images      {st.images_ok} ok, {st.images_error} error; {st.activation_rows:,} activation rows",
        f"topk        {topk}",
    ]
    retried = [
        manifest.get(key, 0)
        for key in ("retried_requests", "failed_shard_attempts", "recorded_after_retries")
    ]
    lines.append(f"retries     {retry_line(*retried).split(': ', 1)[1]} (last run)")
    if st.retry_errors:
        lines.append(f"errors      {st.retry_errors} error rows are transient failures: a rerun retries them")
    if st.dataset_error:
        lines.append(f"dataset     cannot be listed: {st.dataset_error}")
    else:
        lines.append(
            f"dataset now {st.dataset_images} images: {st.new_images} new, {st.missing_images} missing"
        )
    if st.locked_by:
        lines.append(f"writing     {st.locked_by}")
    elif manifest["status"] != "complete":
        lines.append("note        the last run did not finish; rerun the same index command to resume")
    typer.echo("\n".join(lines))


@app.command()
@with_config
def bench(
    config: BenchConfig,
    resize: ResizeOpt = None,
    crop: CropOpt = None,
    decode: DecodeOpt = None,
    stages: Annotated[bool, typer.Option(help="Run the stage and end-to-end benchmarks.")] = True,
    query: Annotated[
        bool, typer.Option(help="Also build a synthetic index and time one-unit queries.")
    ] = False,
    query_rows: Annotated[
        int, typer.Option(min=1, help="Activation rows of the synthetic index.")
    ] = 100_000_000,
) -> None:
    """Measure decode, forward, finishing shards, the whole job (Ray, local, plain loop), driver CPU,
    memory, size on disk and queries."""
    from rich.table import Table

    overrides = (("--resize", resize), ("--crop", crop), ("--decode", decode.value if decode else None))
    config.extra_args = tuple(
        arg for key, value in overrides if value is not None for arg in (key, str(value))
    )
    table = Table(title=f"actindex bench on this machine ({'--host' if config.host else config.model})")
    table.add_column("measure")
    table.add_column("result", justify="right")
    if stages:
        run, rows = (run_host_bench, host_rows) if config.host else (run_bench, table_rows)
        try:
            results = run(config, echo=lambda s: typer.echo(s, err=True))
        except UserError as exc:
            raise fail(exc) from None
        for measure, value in rows(results):
            table.add_row(measure, value)
    out = config.out
    if query:
        _bench_queries(Path(out) / "query", query_rows, table)
    _console().print(table)
    results_file = "host_results.json" if config.host else "results.json"
    typer.echo(f"results: {out}/{results_file}" + (f", {out}/query/query_results.json" if query else ""))


def _bench_queries(folder: Path, rows: int, table) -> None:
    typer.echo(f"writing a synthetic index of {rows:,} activation rows ...", err=True)
    build_synthetic_index(folder, rows, echo=lambda s: None)
    t = time_queries(folder)
    table.add_row(
        f"top-9 of one unit from activations ({t['rows']:,} rows)", f"{t['activations_sorted_ms']:.1f} ms"
    )
    slower = f"{t['activations_unsorted_ms']:.1f} ms ({t['speedup_vs_unsorted']:.0f}x slower)"
    table.add_row("same query over the same rows written unsorted", slower)
    table.add_row("top-9 of one unit from topk", f"{t['topk_ms']:.1f} ms")
    table.add_row("synthetic activations on disk", f"{t['bytes_sorted'] / t['rows']:.2f} bytes/row")


@app.command()
def demo(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory for the photos, the index and the grids.")
    ] = Path("actindex-demo"),
    executor: Annotated[
        Executor, typer.Option(help="ray (a local Ray) or local (one process).")
    ] = Executor.ray,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Index scikit-image's photos with the built-in EfficientNet-Lite0; draw top-image grids and a report."""

    try:
        run_demo(out, executor=executor, progress=progress, echo=typer.echo)
    except UserError as exc:
        raise fail(exc) from None


def main(prog_name: str = "actindex") -> None:
    """`actindex` and `python -m actindex` (what `ray job submit -- python -m actindex index ...` runs)."""
    app(prog_name=prog_name)


def main_index(prog_name: str) -> None:
    """The index command alone, as `python -m actindex.jobs.index SOURCE ...` (the older spelling) runs it."""
    alone = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    alone.command()(index)
    alone(prog_name=prog_name)
