"""The one error type the CLI turns into a single clear line and a non-zero exit."""


class PulseError(Exception):
    """A user-facing failure: bad input, a missing prerequisite, an unreachable service.

    The CLI prints ``pulse: error: <message>`` and exits with ``exit_code``; no traceback.
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
