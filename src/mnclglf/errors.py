"""The one exception type that reaches the user as a one-line message.

Library code raises :class:`UserError` for anything a user can fix (a bad
parameter, a corrupt archive, a missing file); the CLI prints ``error: <msg>``
and exits non-zero, without a traceback.
"""


class UserError(Exception):
    """A problem with the user's input, worded so that it names what to fix."""
