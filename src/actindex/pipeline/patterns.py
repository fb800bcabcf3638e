"""Layer-name globs, as `--layers` takes them everywhere (index, layers, report).

    pattern_regex("layer*").match("layer4")        # a match: '*' stays within one dotted name
    pattern_regex("layer*").match("layer4.0")      # None
    pattern_regex("features.**").match("features.3.1")   # a match: '**' crosses dots

No torch here: the report and the CLI match layer names without loading a model.
"""

from __future__ import annotations

import re

from actindex.pipeline.options import Option, comma_list

# --layers of `actindex index` and `actindex report`: "layer4, fc" or a list of names
LAYERS = Option("Comma-separated layer names or globs, e.g. 'layer*,fc'.", parse=comma_list)


def pattern_regex(pattern: str) -> re.Pattern:
    """The regex of a layer glob: `*` within one dotted name, `**` across dots, `?` one character."""
    parts = re.split(r"(\*\*|\*|\?)", pattern)
    wildcard = {"**": ".*", "*": "[^.]*", "?": "[^.]"}
    return re.compile("".join(wildcard.get(part, re.escape(part)) for part in parts) + r"\Z")
