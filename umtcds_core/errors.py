"""One base class for errors that are the user's to fix.

The CLI and the dashboard print ``str(error)`` of a :class:`UserError` as the whole message (no traceback): it must be
one sentence saying what is wrong and what to do.
"""


class UserError(Exception):
    """A problem with the user's input, files or environment, phrased for the user."""
