"""The one exception users see as a single line and exit code 2 (bad input, never a bug)."""


class TurnphaseError(Exception):
    """Bad input or an unusable environment: the CLI prints `error: <message>` and exits 2."""
