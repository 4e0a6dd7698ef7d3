"""The exception types that reach the user as a one-line message.

Library code raises :class:`UserError` for anything a user can fix (a bad
parameter, a corrupt archive, a missing file); the CLI prints ``error: <msg>``
and exits 1, without a traceback. :class:`DivergedError` (a non-finite loss) exits
with :data:`EXIT_DIVERGED` instead, so that a script can tell a run that diverged
from a run that was given bad input.
"""

EXIT_USER_ERROR = 1
EXIT_DIVERGED = 3


class UserError(Exception):
    """A problem with the user's input, worded so that it names what to fix."""


class DivergedError(UserError):
    """Training produced a non-finite loss; the last good checkpoint is left intact."""
