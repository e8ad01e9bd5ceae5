"""The one exception type shown to users.

`UserError` carries a message that says what was wrong and what to do. The CLI prints it without a traceback and
exits with status 2; library callers can catch it as a `ValueError`.
"""


class UserError(ValueError):
    """A bad input, a missing file or an impossible configuration, with a message that says what to do."""
