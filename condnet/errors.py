"""The one exception type for mistakes a user can fix (bad names, values, files)."""


class CondnetError(ValueError):
    """A user-facing error: its message is one line that says what was expected.

    The CLI prints it without a traceback and exits with status 2.
    """


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (at most `limit` characters), for a one-line
    error that quotes a library's own."""
    lines = str(err).strip().splitlines()
    if not lines:
        return type(err).__name__
    line = lines[0]
    if len(line) <= limit:
        return line
    cut = line[: limit - 3].rsplit(" ", 1)[0]  # whole words only
    return cut + "..."


class Interrupted(Exception):
    """Training stopped on a signal; `last.pt` holds the last completed epoch."""

    def __init__(self, signum: int, epoch: int = -1, step: int = -1) -> None:
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum, self.epoch, self.step = signum, epoch, step
