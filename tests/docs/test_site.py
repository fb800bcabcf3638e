"""The documentation site (mkdocs.yml, docs/): `mkdocs build --strict` into a temporary folder, then opened
from file:// in Debian's Chromium (Playwright), as tests/queries/test_report.py opens the report. The CLI
reference must list every command and every option of `actindex index` as the Typer app defines them, the
API reference the public API; no page may request anything but file://; a broken link fails the build."""

from __future__ import annotations

import inspect
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "mkdocs.yml"
LOCAL = ("file://", "data:", "blob:", "about:")  # nothing that leaves the machine
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

pytest.importorskip("material", reason="the docs extra is not installed (mkdocs-material)")
pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra is not installed (mkdocstrings)")


def index_command():
    """`actindex` as click sees it (Typer's own click: its classes are not click's, so no isinstance)."""
    import typer.main

    from actindex.jobs.cli import app

    return typer.main.get_command(app)


def words(text: str) -> str:
    return " ".join(text.replace("`", "").split())


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs") / "site"
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", CONFIG, "--site-dir", out],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"mkdocs build --strict: {time.perf_counter() - started:.1f} s")
    return out


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, headless=True, args=LAUNCH_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    """A fresh page that records every request it makes, failed requests and script errors."""
    context = browser.new_context()
    tab = context.new_page()
    tab.requests, tab.failed, tab.errors = [], [], []
    tab.on("request", lambda request: tab.requests.append(request.url))
    tab.on("requestfailed", lambda request: tab.failed.append(f"{request.url}: {request.failure}"))
    tab.on("pageerror", lambda error: tab.errors.append(str(error)))
    yield tab
    context.close()
    assert not tab.errors, tab.errors


def test_cli_reference_lists_every_command_and_every_index_option(site, page):
    group = index_command()
    page.goto((site / "reference" / "cli.html").as_uri())

    commands = [name for name, command in group.commands.items() if not command.hidden]
    assert page.eval_on_selector_all("h2[id]", "hs => hs.map(h => h.id)") == commands
    for name in commands:
        assert page.inner_text(f"h2#{name} > code") == f"actindex {name}"

    command = group.commands["index"]
    ctx = command.make_context(
        "index", [], parent=group.make_context("actindex", [], resilient_parsing=True), resilient_parsing=True
    )
    rows = page.eval_on_selector_all(
        'table[data-command="index"] tbody tr',
        """rows => rows.map(r => ({
            names: [...r.cells[0].querySelectorAll('code')].map(c => c.textContent),
            help: r.cells[2].textContent}))""",
    )
    shown = {name: row for row in rows for name in row["names"]}
    params = [p for p in command.params if not p.hidden]
    options = {o for p in params if p.param_type_name == "option" for o in (*p.opts, *p.secondary_opts)}
    arguments = {p.name.upper() for p in params if p.param_type_name == "argument"}
    assert len(options) > 30 and arguments == {"SOURCE"}
    assert set(shown) == options | arguments  # every option shown, none that the command lacks
    for p in params:  # and with the text `actindex index --help` prints, defaults and ranges included
        name = p.name.upper() if p.param_type_name == "argument" else p.opts[0]
        assert words(shown[name]["help"]) == words(p.get_help_record(ctx)[1]), name
    assert words(page.inner_text('.cli-command[data-command="index"]')).startswith(words(command.help))


def test_api_reference_documents_the_public_api(site, page):
    import actindex
    from actindex.queries.api import Index, Result

    page.goto((site / "reference" / "api.html").as_uri())
    ids = set(page.eval_on_selector_all("[id]", "els => els.map(e => e.id)"))
    api = "actindex.queries.api"
    expected = {"actindex.open", "actindex.index", f"{api}.Index", f"{api}.Result"}
    expected |= {f"actindex.queries.masks.{name}" for name in ("masked_tiles", "unit_mask_maps", "MaskMap")}
    catalog = ("label_selectivity", "image_units", "unit_stats", "topk_drift", "built_from", "feeds")
    expected |= {f"actindex.queries.catalog.{name}" for name in catalog}
    explain = ("unit_explanations", "projection_image", "occlusion_image")
    expected |= {f"actindex.queries.explain.{name}" for name in explain}
    expected.add("actindex.jobs.contributions.run_contributions")
    for cls in (Index, Result):
        path = f"{api}.{cls.__name__}"
        expected |= {f"{path}.{n}" for n, m in vars(cls).items() if not n.startswith("_") and callable(m)}
    assert expected <= ids, sorted(expected - ids)
    # the docstrings themselves, not just the names
    for obj in (actindex.open, Index.top):
        assert words(inspect.getdoc(obj).splitlines()[0]) in words(page.inner_text("article"))


def test_no_request_leaves_file_and_every_link_resolves(site, page):
    # 404.html is for web servers (root-relative /assets/ links by design); file:// never shows it
    pages = sorted(p for p in site.rglob("*.html") if p.name != "404.html")
    assert len(pages) > 15
    for html in pages:
        page.goto(html.as_uri(), wait_until="load")
        for href in page.eval_on_selector_all("a[href], link[href]", "as => as.map(a => a.href)"):
            if href.startswith("file://"):
                target = Path(re.sub(r"[#?].*$", "", href.removeprefix("file://")))
                assert target.is_file(), f"{html.relative_to(site)}: {href}"
    outside = [url for url in page.requests if not url.startswith(LOCAL)]
    assert not outside, outside
    # a missing file is net::ERR_FILE_NOT_FOUND; ERR_ABORTED is a load cut short by the next goto
    assert not [f for f in page.failed if not f.endswith("net::ERR_ABORTED")], page.failed
    assert any("/assets/javascripts/bundle." in url for url in page.requests)  # the recorder saw the theme


def test_search_works_from_file(site, page):
    """Material's offline plugin: the index as a script, the worker in an iframe (vendored iframe-worker)."""
    page.goto((site / "reference" / "cli.html").as_uri())
    page.keyboard.press("/")  # focuses the search box
    page.wait_for_function(  # "Initializing search" until the worker has the index
        "() => document.querySelector('.md-search-result__meta').textContent.trim()"
        " === 'Type to start searching'"
    )
    page.keyboard.type("receptive")
    page.wait_for_selector(".md-search-result__item")
    links = page.eval_on_selector_all(".md-search-result__item a", "as => as.map(a => a.href.split('?')[0])")
    assert (site / "receptive-fields.html").as_uri() in links, links  # ?h=receptive: search.highlight
    page.click('.md-search-result__item a[href*="/receptive-fields.html"]')
    page.wait_for_url((site / "receptive-fields.html").as_uri() + "?h=receptive")
    assert page.inner_text("h1").startswith("Receptive fields")
    assert all(url.startswith(LOCAL) for url in page.requests), page.requests


def test_a_broken_link_fails_the_strict_build(tmp_path, caplog):
    """The real mkdocs.yml over a copy of docs/ with a missing page and a missing anchor planted."""
    from mkdocs.commands.build import build
    from mkdocs.config import load_config
    from mkdocs.exceptions import Abort

    docs = shutil.copytree(ROOT / "docs", tmp_path / "docs")
    page = docs / "getting-started.md"
    page.write_text(
        page.read_text()
        + "\n[gone](no-such-page.md) and [an option](reference/cli.md#index-no-such-option)\n"
    )
    config = load_config(str(CONFIG), docs_dir=str(docs), site_dir=str(tmp_path / "site"), strict=True)
    with caplog.at_level(logging.WARNING, logger="mkdocs"), pytest.raises(Abort, match="strict mode"):
        build(config)
    log = caplog.text
    assert "no-such-page.md" in log and "index-no-such-option" in log, log
