"""Errors a user can fix, told apart from bugs.

    raise UnknownNameError("layer 'layer5' not found; did you mean layer4? see: actindex layers resnet50")

The CLI prints a UserError's message as one line and exits with code 2; any other exception is a bug in
actindex and shows its traceback. Each class also derives from the built-in exception it refines, so
library callers can keep catching LookupError, ValueError or FileNotFoundError.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: a name, a path, an option value, the state of an index directory."""


class UnknownNameError(UserError, LookupError):
    """A model, layer or unit that does not exist (the message names the closest real ones)."""


class InvalidInputError(UserError, ValueError):
    """An option value, a model or a file that cannot be used as given."""


class MissingInputError(UserError, FileNotFoundError):
    """A dataset, weights file or index that is not where the user said."""


class UnsupportedActivationError(InvalidInputError):
    """A projection method met a nonlinearity it has no stated rule for (pipeline.attribution.rules)."""


class SourceUnreachableError(UserError, ConnectionError):
    """An object store (or other remote source) that does not answer: a wrong endpoint, no network."""
