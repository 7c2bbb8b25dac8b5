"""The one exception users see as a single line and exit code 2 (bad input, never a bug)."""


class TurnphaseError(Exception):
    """Bad input or an unusable environment: the CLI prints `error: <message>` and exits 2."""


def one_line(e: BaseException) -> str:
    """An exception as one short line: its type and its message with the line breaks folded."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__
