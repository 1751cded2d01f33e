"""The one error type the CLI turns into a single clear line and a non-zero exit."""

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class PulseError(Exception):
    """A user-facing failure: bad input, a missing prerequisite, an unreachable service.

    The CLI prints ``pulse: error: <message>`` and exits with ``exit_code``; no traceback.
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def error_line(exc: BaseException) -> str:
    """``pulse: error: <message>`` on one line: a library's multi-line, coloured error
    chain (delta-rs prints its causes one per line, each ``↳``) joined with spaces."""
    text = " ".join(_ANSI.sub("", str(exc)).split())
    return f"pulse: error: {text}"
