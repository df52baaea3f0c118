"""The one exception type for mistakes a user can fix (bad names, values, files)."""


class CondnetError(ValueError):
    """A user-facing error: its message is one line that says what was expected.

    The CLI prints it without a traceback and exits with status 2.
    """
