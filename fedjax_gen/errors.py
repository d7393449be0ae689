"""User-facing errors: one line that names the fix; the CLI prints it and exits with code 2.

Library code raises the typed subclasses below and names *parameters* (config fields) in
braces, e.g. ``InvalidValue("clip", "{clip} must be a finite number > 0, got 0")``. Read as a
library error the braces become the bare field name ("clip must be ..."); the CLI renders
the same error with the flag that sets the field ("--clip must be ..."), from the flag table
it generated, so a message can never name a flag that does not exist. Nobody matches
message text: callers catch the type.
"""

from __future__ import annotations

import re

_PARAM = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


class UserError(ValueError):
    """Bad input from the user (flags, files, budgets). The message must say how to fix it."""

    def __init__(self, message: str, *, param: str | None = None):
        self.template = message
        self.param = param
        super().__init__(self.render())

    def render(self, flag_for=None) -> str:
        """The message with each {field} replaced by flag_for(field) (default: the field name)."""
        name = flag_for or (lambda field: field)
        return _PARAM.sub(lambda m: name(m.group(1)), self.template)


class InvalidValue(UserError):
    """A config field (or flag) holds a value outside its domain."""

    def __init__(self, param: str, message: str):
        super().__init__(message, param=param)


class UnreachableBudget(UserError):
    """No noise multiplier reaches the requested epsilon in the requested steps."""


class RunDirError(UserError):
    """A run directory that exists, is locked by another process, or cannot be written."""


class NonFiniteState(UserError):
    """The server state became NaN/inf: the run stops, its last good checkpoint kept."""
