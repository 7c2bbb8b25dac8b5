"""The exceptions users see as a single line and exit code 2 (bad input, never a bug)."""


class TurnphaseError(Exception):
    """Bad input or an unusable environment: the CLI prints `error: <message>` and exits 2."""


class ConfigError(TurnphaseError, ValueError):
    """A bad value of one config field. The message names the field (`n_conversations: ...`), as
    Python users set it; the CLI shows the flag that sets it instead (`--n-conversations: ...`)."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


def one_line(e: BaseException) -> str:
    """An exception as one short line: its type and its message with the line breaks folded."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__
