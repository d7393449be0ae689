"""User-facing errors: one line that names the fix; the CLI prints it and exits with code 2."""


class UserError(ValueError):
    """Bad input from the user (flags, files, budgets). The message must say how to fix it."""
