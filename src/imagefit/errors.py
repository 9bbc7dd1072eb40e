"""The one exception users see.

Every error a user can cause (bad folder, bad option, damaged file) is an `ImagefitError` whose message is
one line naming the problem and the fix. The CLI prints it without a traceback and exits non-zero.
"""


class ImagefitError(Exception):
    """A problem with the user's input, stated in one line with the fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))  # always one line, whatever the caller wrote
