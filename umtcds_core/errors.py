"""One base class for errors that are the user's to fix.

The CLI and the dashboard print ``str(error)`` of a :class:`UserError` as the whole message (no traceback): it must be
one sentence saying what is wrong and what to do. Errors the dashboard shows often also carry the sentence in Chinese
(``zh=``); the dashboard shows that one when its language is Chinese (:func:`umtcds_core.i18n.error_text`).
"""


class UserError(Exception):
    """A problem with the user's input, files or environment, phrased for the user (``zh``: the same in Chinese)."""

    def __init__(self, *args, zh: str | None = None):
        super().__init__(*args)
        self.zh = zh
