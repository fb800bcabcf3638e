"""The README is the front page (short, its links good, its test command the one CI runs) and the manual it
used to hold lives on in docs/: every section heading of the one-page README is a heading of some page.
Every command on these pages that indexes names its weights."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_LINES = 200

# The headings of the README when it was the whole manual (1,166 lines, before the site), frozen: each must
# stay a heading of some page of docs/, so moving the text never drops a section.
MANUAL_HEADINGS = [
    "actindex",
    "Quick start",
    "Using it",
    "Data on object stores and in dataset formats",
    "On a cluster",
    "Looking at units",
    "The report: a site of every unit",
    "Activation masks",
    "Unit names",
    "Python",
    "The analysis catalog",
    "Failure and resume",
    "How it works",
    "Receptive fields",
    "The index on disk",
    "Performance",
    "GPU",
    "Development",
]

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*(\{[^}]*\})?\s*$")
INDEXING = re.compile(r"actindex index |actindex\.index\(|actindex\.jobs\.measured ")


def prose_and_code(text: str) -> tuple[list[str], list[str]]:
    """The lines outside fenced code blocks, and the lines inside them (continuation lines joined)."""
    prose, code, inside = [], [], False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
        elif inside and code and code[-1].endswith("\\"):
            code[-1] = code[-1][:-1] + " " + line.strip()
        else:
            (code if inside else prose).append(line)
    return prose, code


def headings(text: str) -> list[str]:
    return [m.group(2) for line in prose_and_code(text)[0] if (m := HEADING.match(line))]


def doc_pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def test_the_readme_is_a_front_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines; the manual belongs in docs/"
    assert "![" in README.read_text()  # its one picture
    assert headings(README.read_text())[:2] == ["actindex", "Quick start"]


def test_every_section_of_the_old_manual_is_a_heading_of_some_page():
    on_pages = {heading for page in doc_pages() for heading in headings(page.read_text())}
    missing = [heading for heading in MANUAL_HEADINGS if heading not in on_pages]
    assert not missing, f"sections of the former README on no page of docs/: {missing}"


def test_the_heading_check_sees_only_headings():
    text = "# Title\n\nPython\n\n```bash\n# GPU\n```\n\n## Unit names {#names}\n"
    assert headings(text) == ["Title", "Unit names"]  # not a word of prose, not a comment in code


def test_the_readme_links_lead_to_files():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text())
    assert any(link.startswith("docs/") for link in links)
    broken = [link for link in links if "://" not in link and not (ROOT / link).exists()]
    assert not broken, broken


def test_ci_runs_exactly_the_readmes_test_command():
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    test_command = blocks[1].strip()  # the quick start's second command
    assert "pytest" in test_command
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == test_command


def indexing_commands() -> list[tuple[str, str]]:
    """(file, command) for every command in a code block of the README and docs/ that indexes, and the
    KubeRay manifest's entrypoint."""
    found = []
    for path in [README, *doc_pages()]:
        for line in prose_and_code(path.read_text())[1]:
            if INDEXING.search(line) and not line.lstrip().startswith("#"):
                found.append((path.relative_to(ROOT).as_posix(), line))
    manifest = yaml.safe_load((DOCS / "kuberay" / "rayjob.yaml").read_text())
    found.append(("docs/kuberay/rayjob.yaml", manifest["spec"]["entrypoint"]))
    return found


def names_weights(command: str) -> bool:
    if "actindex.index(" in command:
        return "weights=" in command
    words = shlex.split(command, comments=True)
    return "--weights" in words or any(word.startswith("--weights=") for word in words)


def test_every_command_that_indexes_names_its_weights():
    commands = indexing_commands()
    assert len(commands) > 10
    unnamed = [f"{path}: {command}" for path, command in commands if not names_weights(command)]
    assert not unnamed, "name the weights (--weights DEFAULT, or --weights random):\n" + "\n".join(unnamed)


def test_the_weights_check_catches_a_command_without_them():
    assert not names_weights("actindex index PHOTOS/ --model resnet50 --out idx/  # --weights DEFAULT")
    assert not names_weights('actindex.index("photos/", out="idx/", layers="fc")')
    assert names_weights("python -m actindex index s3://b/ --weights=DEFAULT --out idx/")
