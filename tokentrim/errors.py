"""The one exception type shown to users.

`UserError` carries a message that says what was wrong and what to do. The CLI prints it without a traceback and
exits with status 2; library callers can catch it as a `ValueError`. Library messages name arguments and config
fields (`num_frames`, `tokentrim.p`); `field` says which one, so a front end can name its own option instead
(the CLI says `--latent-frames`).
"""


class UserError(ValueError):
    """A bad input, a missing file or an impossible configuration, with a message that says what to do."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def shorten(text: object, limit: int = 80) -> str:
    """`repr` of user input for a message, cut to about `limit` characters (a 10,000-character prompt is not
    echoed back whole)."""
    text = str(text)
    if len(text) <= limit:
        return repr(text)
    return repr(text[: limit - 20]) + f"... ({len(text)} characters)"
