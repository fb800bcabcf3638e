"""MkDocs hook: the CLI reference page is generated at build time from the Typer app, so it cannot drift.

`docs/reference/cli.md` holds a marker line; this hook replaces it with one section per command of
`actindex.jobs.cli:app` (as `typer.main.get_command` builds it): its help, its usage line and a table of
its arguments and options, with the same text (defaults, ranges, choices) that `--help` prints.

Why not mkdocs-click: Typer >= 0.2x builds its commands on a vendored click (`typer._click`), so
mkdocs-click's `isinstance(param, click.Option)` checks fail; its table style then lists no options at all.
This hook uses only what both clicks share (opts, secondary_opts, get_help_record, get_usage).
"""

from __future__ import annotations

import html
import re

from mkdocs.exceptions import PluginError

MARKER = "<!-- actindex-cli-reference -->"
PAGE = "reference/cli.md"
PROG = "actindex"


def _inline(text: str) -> str:
    """Escape for HTML, then render `code` spans (the help strings use Markdown backticks)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


def _row(command: str, param, ctx) -> str:
    record = param.get_help_record(ctx)
    synopsis, help_text = record if record else ("", param.help or "")
    if param.param_type_name == "argument":
        names = [param.name.upper()]
        value = synopsis.split(" ", 1)[1] if " " in synopsis else ""
    else:
        names = [*param.opts, *param.secondary_opts]
        value = synopsis[synopsis.index(" <") + 1 :] if " <" in synopsis else ""
    anchor = f"{command}-{names[0].lstrip('-')}".lower()
    cells = (
        " ".join(f"<code>{html.escape(n)}</code>" for n in names),
        f"<code>{html.escape(value)}</code>" if value else "",
        _inline(help_text),
    )
    return (
        f'<tr id="{anchor}" data-param="{html.escape(param.name)}">'
        + "".join(f"<td>{c}</td>" for c in cells)
        + "</tr>"
    )


def cli_reference() -> str:
    import typer.main

    from actindex.jobs.cli import app

    group = typer.main.get_command(app)
    root = group.make_context(PROG, [], resilient_parsing=True)
    parts = [_inline(group.help or "").strip(), ""]
    for name, command in group.commands.items():  # registration order, as `actindex --help` lists them
        if command.hidden:
            continue
        ctx = command.make_context(name, [], parent=root, resilient_parsing=True)
        rows = [_row(name, p, ctx) for p in command.params if not p.hidden]
        parts += [
            f"## `{PROG} {name}` {{#{name}}}",
            "",
            f'<div class="cli-command" data-command="{name}" markdown>',
            "",
            command.help or "",  # Markdown: the docstrings' backticks and "- " lists render
            "",
            "```text",
            command.get_usage(ctx),
            "```",
            "",
            "</div>",
            "",
            f'<table data-command="{name}">',
            "<thead><tr><th>Argument or option</th><th>Value</th><th>Description</th></tr></thead>",
            "<tbody>",
            *rows,
            "</tbody></table>",
            "",
        ]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise PluginError(f"{PAGE} lost its marker line {MARKER!r}: the CLI reference would be empty")
    return markdown.replace(MARKER, cli_reference())
