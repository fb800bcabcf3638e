"""The `actindex` command line: thin Typer commands that build configs and call jobs/ and queries/.

    actindex demo --out demo/
    actindex layers resnet50
    actindex index PHOTOS/ --model resnet50 --weights DEFAULT --layers 'layer*' --k 100 --out idx/
    actindex top idx/ --layer layer4 --unit 17 --k 9
    actindex grid idx/ --layer layer4 --units 0-15 --k 9 --out layer4.png
    actindex report idx/ --out site/            # a static site: a page per layer, a card per unit
    actindex sql idx/ "SELECT layer, count(*) FROM activations GROUP BY 1"
    actindex sql idx/ --compare idx_b/ "SELECT * FROM topk_drift('layer4', k := 9)"   # the catalog's macros

Heavy modules (torch, ray, duckdb) are imported inside the commands so `--help` stays fast.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from actindex.jobs.benchmark import BenchConfig, run_bench, table_rows
from actindex.jobs.demo import run_demo
from actindex.jobs.indexing import run_index
from actindex.jobs.query_bench import build_synthetic_index, time_queries
from actindex.jobs.spec import Device, Executor, Precision, RfGates, Store, index_request
from actindex.jobs.status import index_status
from actindex.pipeline.decode import DEFAULT_MAX_PIXELS
from actindex.pipeline.errors import InvalidInputError, UserError
from actindex.pipeline.layers import describe_all
from actindex.pipeline.models import load_model
from actindex.pipeline.preprocess import Decode, Interpolation
from actindex.pipeline.retry import DEFAULT_BUDGET_S
from actindex.queries.catalog import macros, stopped
from actindex.queries.db import IncompleteIndexError, arrow_table, connect, unit_tops
from actindex.queries.grid import Layout, unit_list
from actindex.queries.masks import DEFAULT_THRESHOLD, MaskMode
from actindex.queries.report import Mask, ReportConfig, plan_report, write_report
from actindex.queries.sheet import unit_sheet

app = typer.Typer(
    help="actindex: which images most excite unit k in layer L? Index a dataset, query it with SQL, draw grids.",  # noqa: E501
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

IndexDir = Annotated[
    str,
    typer.Argument(help="Index written by `actindex index`: a directory, or a URL (s3://bucket/prefix/)."),
]
LayerOpt = Annotated[str, typer.Option("--layer", "-l", help="Layer name as indexed (see the layers table).")]
KOpt = Annotated[int, typer.Option("--k", "-k", min=1, help="How many top images per unit.")]
MaskThresholdOpt = Annotated[
    float, typer.Option(help="Masks: their level, a fraction (0-1] of the unit's top-1 activation.")
]
MaskTrustOpt = Annotated[
    bool, typer.Option(help="Masks: allow loading an index's TorchScript or python: model (runs its code).")
]
DecodeOpt = Annotated[
    Decode | None,
    typer.Option(
        help="fast (default): EXIF orientation applied, large JPEGs decoded at reduced scale; torchvision: "
        "exactly torchvision's pixels (full decode, EXIF ignored; CPU decoding only)."
    ),
]

RfGatesOpt = Annotated[
    RfGates,
    typer.Option(
        help="Receptive fields through squeeze-excitation gates: constant (default) treats the gates as "
        "constants, so boxes follow the spatial path (rf_global_context marks those layers); strict makes "
        "every position after a gate see the whole image."
    ),
]


def _fail(exc: BaseException, code: int = 2) -> typer.Exit:
    """One line on stderr, exit code 2, no traceback: for errors the user can fix (UserError). Anything
    else is a bug and keeps its traceback. (Exit 1 where the index cannot answer yet.)"""
    typer.echo(f"Error: {' '.join(str(exc).split())}", err=True)
    return typer.Exit(code=code)


def _console():
    from rich.console import Console

    return Console(width=200 if not sys.stdout.isatty() else None)


def parse_units(text: str) -> list[int]:
    """'0-3,7' -> [0, 1, 2, 3, 7] (actindex.queries.grid.unit_list), a bad list as typer's error."""
    try:
        return unit_list(text)
    except InvalidInputError as exc:
        raise typer.BadParameter(str(exc)) from None


def parse_floats(text: str | None) -> tuple[float, float, float] | None:
    if text is None:
        return None
    values = tuple(float(v) for v in text.split(","))
    if len(values) != 3:
        raise typer.BadParameter(f"{text!r} needs three comma-separated numbers, e.g. 0.485,0.456,0.406")
    return values  # type: ignore[return-value]


@app.command()
def index(
    source: Annotated[
        str,
        typer.Argument(
            help="Image folder (recursive; subfolders = labels), glob, .txt/.csv list, WebDataset shards "
            "(a.tar, 'shards/{00000..00099}.tar') or Parquet files ('data/*.parquet'); local or a URL "
            "(s3://bucket/prefix/)."
        ),
    ],
    out: Annotated[
        str,
        typer.Option("--out", "-o", help="Index to write: a directory, or an S3 URL (s3://bucket/prefix/)."),
    ],
    layers: Annotated[
        str, typer.Option("--layers", help="Comma-separated layer names or globs, e.g. 'layer*,fc'.")
    ],
    model: Annotated[
        str, typer.Option(help="torchvision name, timm:NAME, efficientnet_lite0, or a TorchScript file.")
    ] = "resnet50",
    weights: Annotated[
        str | None,
        typer.Option(
            help="DEFAULT (pretrained; needs internet) or a .pth state dict. Default: random or built-in."
        ),
    ] = None,
    k: KOpt = 100,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Images per forward pass (default: 256 on GPUs, 32 on CPUs).")
    ] = None,
    shard_size: Annotated[
        int, typer.Option(min=1, help="Images per shard (unit of output and resume).")
    ] = 1024,
    executor: Annotated[
        Executor, typer.Option(help="ray (local Ray unless --address) or local (one process, no Ray).")
    ] = Executor.ray,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: RAY_ADDRESS, else a local Ray).")
    ] = None,
    device: Annotated[
        Device, typer.Option(help="Where the model runs: auto = cuda where the workers have GPUs.")
    ] = Device.auto,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Model actors (default: one per GPU, or one).")
    ] = None,
    resize: Annotated[int | None, typer.Option(help="Override: shorter side after resize.")] = None,
    crop: Annotated[int | None, typer.Option(help="Override: center-crop size (model input).")] = None,
    interpolation: Annotated[Interpolation | None, typer.Option(help="Override: the resize filter.")] = None,
    mean: Annotated[str | None, typer.Option(help="Override: per-channel mean, e.g. 0.5,0.5,0.5.")] = None,
    std: Annotated[str | None, typer.Option(help="Override: per-channel std.")] = None,
    decode: DecodeOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an index made with other parameters.")] = False,
    prune: Annotated[
        bool, typer.Option(help="Drop indexed images that are no longer in the dataset.")
    ] = False,
    strict: Annotated[bool, typer.Option(help="Exit with code 1 if any image failed to decode.")] = False,
    max_pixels: Annotated[
        int, typer.Option(min=1, help="Images with more pixels are recorded as errors (decompression bombs).")
    ] = DEFAULT_MAX_PIXELS,
    trust_code: Annotated[
        bool,
        typer.Option(help="Allow models that execute code when loaded: TorchScript files, python: specs."),
    ] = False,
    precision: Annotated[
        Precision, typer.Option(help="auto = bf16 on GPUs, fp32 on CPUs; fp32 for exact results.")
    ] = Precision.auto,
    compile: Annotated[bool, typer.Option(help="torch.compile the forward pass (GPU workers).")] = False,
    device_decode: Annotated[
        bool | None,
        typer.Option(
            "--device-decode/--cpu-decode", help="Decode JPEGs on the model's device (default: on GPUs)."
        ),
    ] = None,
    store: Annotated[
        Store, typer.Option(help="dense: every image x unit in activations; topk: only the top-k table.")
    ] = Store.dense,
    rf_gates: RfGatesOpt = RfGates.constant,
    progress: Annotated[
        bool, typer.Option(help="Show a progress bar; with no terminal (batch logs), progress lines.")
    ] = True,
    progress_every: Annotated[
        float,
        typer.Option(
            min=0.1, help="With no terminal: seconds between progress lines (shards, images/s, ETA)."
        ),
    ] = 30.0,
    image_column: Annotated[
        str | None,
        typer.Option(help="Parquet sources: the image-bytes column (default: jpg, image, ... if present)."),
    ] = None,
    key_column: Annotated[
        str | None,
        typer.Option(help="Parquet: a unique id per row, hashed into image ids (default: key, else row)."),
    ] = None,
    label_column: Annotated[
        str | None, typer.Option(help="Parquet sources: the column stored as label, e.g. caption.")
    ] = None,
    names: Annotated[
        list[str] | None,
        typer.Option(
            "--names",
            help="Unit names: FILE (UTF-8, one name per line; line i names unit i of the model's output "
            "layer, a blank line none) or LAYER=FILE for another layer; repeat for several. A rerun takes "
            "new files without recomputing anything.",
        ),
    ] = None,
    retry_budget: Annotated[
        float,
        typer.Option(
            min=0,
            help="Seconds a request that fails transiently (HTTP 5xx/429, S3 SlowDown, timeouts, resets, "
            "EIO) is retried for, with backoff; a shard whose reads still fail runs again, up to 4 times.",
        ),
    ] = DEFAULT_BUDGET_S,
    record_failed_reads: Annotated[
        bool,
        typer.Option(
            help="Record images whose reads still fail after the retry budget as error rows "
            "('unreadable after retries') and finish, instead of stopping; --retry-errors retries them.",
        ),
    ] = False,
    retry_errors: Annotated[
        bool,
        typer.Option(
            help="Index again every shard holding an error row (files fixed since, a codec installed since)."
        ),
    ] = False,
) -> None:
    """Index images: per image and unit, the max activation, where it peaked and its receptive-field box.

    Rerunning the same command resumes: completed shards are kept, new images are added.
    """

    try:
        request = index_request(
            source,
            out,
            layers,
            model=model,
            weights=weights,
            k=k,
            batch_size=batch_size,
            shard_size=shard_size,
            executor=executor,
            address=address,
            device=device,
            workers=workers,
            overwrite=overwrite,
            prune=prune,
            max_pixels=max_pixels,
            trust_code=trust_code,
            precision=precision,
            compile=compile,
            device_decode=device_decode,
            store=store,
            rf_gates=rf_gates,
            progress=progress,
            progress_every=progress_every,
            resize=resize,
            crop=crop,
            interpolation=interpolation,
            mean=parse_floats(mean),
            std=parse_floats(std),
            decode=decode,
            image_column=image_column,
            key_column=key_column,
            label_column=label_column,
            names=tuple(names or ()),
            retry_budget=retry_budget,
            record_failed_reads=record_failed_reads,
            retry_errors=retry_errors,
        )
        summary = run_index(request)
    except UserError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt:
        typer.echo(
            f"Interrupted: completed shards are kept; rerun the same command to resume into {out}", err=True
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


def retry_line(retried: int, failed: int, recorded: int) -> str:
    """What transient failures cost a run (pipeline.retry), for the summary and `actindex status`."""
    text = f"transient failures: {retried:,} requests retried, {failed} shard attempts failed and ran again"
    if recorded:
        text += f", {recorded} images recorded 'unreadable after retries' (--retry-errors retries them)"
    return text


@app.command()
def layers(
    model: Annotated[
        str, typer.Argument(help="torchvision name, timm:NAME, efficientnet_lite0, or a TorchScript file.")
    ],
    weights: Annotated[
        str | None, typer.Option(help="DEFAULT or a .pth state dict (shapes do not depend on it).")
    ] = None,
    pattern: Annotated[str, typer.Option(help="Only layers matching this glob.")] = "**",
    input_size: Annotated[
        int | None, typer.Option(help="Model input side in pixels (default: the model's crop).")
    ] = None,
    trust_code: Annotated[bool, typer.Option(help="Allow TorchScript files and python: specs.")] = False,
    rf_gates: RfGatesOpt = RfGates.constant,
) -> None:
    """List every named layer: type, channels, output size, receptive field size and stride; "context"
    marks layers scaled by squeeze-excitation gates (their boxes treat the gates as constants)."""
    from rich.table import Table

    try:
        loaded = load_model(model, weights, trust_code)
        size = input_size or loaded.preprocessing.crop
        rows = describe_all(loaded.module, pattern, (size, size), rf_gates.value)
    except UserError as exc:
        raise _fail(exc) from None
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
    table = Table(title=f"top {len(rows)} images for {layer} unit {unit}{name} (from {tops.source})")
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
        raise _fail(exc, code=1) from None
    except UserError as exc:
        raise _fail(exc) from None


@app.command()
def grid(
    index_dir: IndexDir,
    layer: LayerOpt,
    units: Annotated[
        str, typer.Option("--units", "-u", help="Units, e.g. 0-15 or 285,1,207 (drawn in this order).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")],
    k: KOpt = 9,
    tile: Annotated[int, typer.Option(min=16, help="Tile side in pixels.")] = 96,
    layout: Annotated[
        Layout, typer.Option(help="row: one row per unit; block: a square block per unit.")
    ] = Layout.row,
    mask: Annotated[
        MaskMode | None,
        typer.Option(
            help="Draw each unit's activation mask over its crops: highlight (outside dimmed, border "
            "outlined) or heat (colour map). Runs the index's model on the images shown. Default: no mask."
        ),
    ] = None,
    mask_threshold: MaskThresholdOpt = DEFAULT_THRESHOLD,
    trust_code: MaskTrustOpt = False,
) -> None:
    """Draw the receptive-field crops of each unit's top-k images into one PNG sheet.

    Each tile shows rank, activation, file name and label; '=N' marks an act that N images share.
    With --mask, each crop shows the unit's map on it (recomputed; class activation maps for logits)."""

    if not 0 < mask_threshold <= 1:
        raise typer.BadParameter(f"{mask_threshold} is not in (0, 1]", param_hint="--mask-threshold")
    mode = mask.value if mask is not None else None
    try:
        sheet = unit_sheet(
            index_dir, layer, parse_units(units), k, tile, layout.value, mode, mask_threshold, trust_code
        )
    except IncompleteIndexError as exc:
        raise _fail(exc, code=1) from None
    except UserError as exc:
        raise _fail(exc) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.image.save(out)
    typer.echo(f"wrote {out} ({sheet.image.width}x{sheet.image.height}, {sheet.units} units)")
    for note in sheet.notes:
        typer.echo(f"note: {note}")


@app.command()
def report(
    index_dir: IndexDir,
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Folder for the site (created; a previous report there is replaced)."
        ),
    ],
    layers: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated layer names or globs, e.g. 'layer4,fc' (default: every indexed layer)."
        ),
    ] = None,
    units: Annotated[
        str | None,
        typer.Option(
            "--units",
            "-u",
            help="Units to draw, e.g. 0-99 or 282,967 (default: all); each layer draws those it has.",
        ),
    ] = None,
    k: KOpt = 9,
    tile: Annotated[int, typer.Option(min=16, help="Side in pixels of each crop's image file.")] = 128,
    mask: Annotated[
        Mask,
        typer.Option(
            help="highlight: outside the unit's activation mask dimmed; heat: its map as a heat map; none: "
            "plain crops (no model run). Masks run the index's model on the images shown."
        ),
    ] = Mask.highlight,
    mask_threshold: MaskThresholdOpt = DEFAULT_THRESHOLD,
    trust_code: MaskTrustOpt = False,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Threads drawing crops (default: one per CPU).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar while crops are drawn.")] = True,
) -> None:
    """Write a static site of the index: run facts, one page per layer with a card per unit (top-k crops,
    histogram of its maxima, label purity), sortable; opens from disk with no server or network."""

    try:
        config = ReportConfig(
            index=index_dir,
            out=out,
            layers=tuple(p.strip() for p in layers.split(",") if p.strip()) if layers else None,
            units=tuple(parse_units(units)) if units else None,
            k=k,
            tile=tile,
            mask=mask,
            threshold=mask_threshold,
            trust_code=trust_code,
            workers=workers,
        )
        plan = plan_report(config)
        with _units_progress(progress, plan.units) as advance:
            summary = write_report(plan, advance)
    except IncompleteIndexError as exc:
        raise _fail(exc, code=1) from None
    except UserError as exc:
        raise _fail(exc) from None
    drawn = ", ".join(f"{layer} {n:,} units" for layer, n in summary.units.items())
    typer.echo(f"wrote {out / 'index.html'}: {drawn}; {summary.crops:,} crops in {summary.seconds:.1f} s")
    for note in summary.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"open: {(out / 'index.html').resolve().as_uri()}")


@contextlib.contextmanager
def _units_progress(enabled: bool, total: int):
    """A rich bar on stderr counting units drawn (nothing with --no-progress); yields its advance(n)."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("drawing"), BarColumn(), MofNCompleteColumn(), TextColumn("units"), TimeRemainingColumn(),
        console=Console(stderr=True), refresh_per_second=4,
    )  # fmt: skip
    task = bar.add_task("report", total=total)
    with bar:
        yield lambda n: bar.advance(task, n)


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
        result = connect(index_dir, compare=compare).sql(query)
        table = arrow_table(result) if result is not None else None
    except duckdb.InvalidInputException as exc:  # a catalog check that says what to do
        raise _fail(stopped(exc)) from None
    except (UserError, duckdb.Error) as exc:
        raise _fail(exc) from None
    if table is None:
        typer.echo("ok")
    elif out is not None:
        _write_result(table, out)
        typer.echo(f"wrote {table.num_rows} rows to {out}")
    else:
        _print_arrow(table, limit)


def _write_result(table, out: Path) -> None:
    import pyarrow.csv
    import pyarrow.parquet

    if out.suffix == ".csv":
        pyarrow.csv.write_csv(table, out)
    elif out.suffix == ".parquet":
        pyarrow.parquet.write_table(table, out)
    else:
        raise _fail(UserError(f"--out {out}: use a .csv or .parquet file name"))


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
        raise _fail(exc) from None
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
def bench(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Working directory (dataset, indexes, results).")
    ] = Path("actindex-bench"),
    model: Annotated[str, typer.Option(help="Model, as for `actindex index`.")] = "resnet50",
    layers: Annotated[str, typer.Option(help="Layers, as for `actindex index`.")] = "relu,layer*",
    images: Annotated[int, typer.Option(min=1, help="Synthetic 500x375 JPEGs to generate.")] = 128,
    source: Annotated[
        str | None, typer.Option(help="Use this image folder instead of synthetic JPEGs.")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 32,
    resize: Annotated[int | None, typer.Option(help="Override the model's resize.")] = None,
    crop: Annotated[int | None, typer.Option(help="Override the model's crop.")] = None,
    decode: DecodeOpt = None,
    scaling: Annotated[bool, typer.Option(help="Also index 4x the images and compare peak memory.")] = False,
    driver_cpu: Annotated[
        bool, typer.Option(help="Also run the Ray job on 4x the images: driver CPU per 1,000 extra images.")
    ] = False,
    executors: Annotated[
        str, typer.Option(help="End-to-end runs, comma-separated: ray, local, plain (the baseline loop).")
    ] = "ray,local,plain",
    finish_shard: Annotated[
        int, typer.Option(min=0, help="Images per shard in the finish-shards benchmark (0 skips it).")
    ] = 1024,
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
    extra = tuple(arg for key, value in overrides if value is not None for arg in (key, str(value)))
    table = Table(title=f"actindex bench on this machine ({model})")
    table.add_column("measure")
    table.add_column("result", justify="right")
    runs = tuple(e.strip() for e in executors.split(",") if e.strip())
    unknown = [e for e in runs if e not in ("ray", "local", "plain")]
    if unknown:
        raise typer.BadParameter(
            f"{', '.join(unknown)}: choose from ray, local, plain", param_hint="--executors"
        )
    if stages:
        config = BenchConfig(
            out=str(out), model=model, layers=tuple(p for p in layers.split(",") if p), images=images,
            source=source, batch_size=batch_size, scaling=scaling, driver_cpu=driver_cpu, executors=runs,
            finish_shard=finish_shard, extra_args=extra,
        )  # fmt: skip
        try:
            results = run_bench(config, echo=lambda s: typer.echo(s, err=True))
        except UserError as exc:
            raise _fail(exc) from None
        for measure, value in table_rows(results):
            table.add_row(measure, value)
    if query:
        _bench_queries(out / "query", query_rows, table)
    _console().print(table)
    typer.echo(f"results: {out}/results.json" + (f", {out}/query/query_results.json" if query else ""))


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
        raise _fail(exc) from None


def main(prog_name: str = "actindex") -> None:
    """`actindex` and `python -m actindex` (what `ray job submit -- python -m actindex index ...` runs)."""
    app(prog_name=prog_name)


def main_index(prog_name: str) -> None:
    """The index command alone, as `python -m actindex.jobs.index SOURCE ...` (the older spelling) runs it."""
    alone = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    alone.command()(index)
    alone(prog_name=prog_name)
