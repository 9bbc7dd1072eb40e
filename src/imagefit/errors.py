"""The one exception users see.

Every error a user can cause (bad folder, bad option, damaged file) is an `ImagefitError` whose message is
one line naming the problem and the fix. The CLI prints it without a traceback and exits non-zero.
"""


MAX_LENGTH = 600  # a message quoting a user's file is cut here: an error is a line, not a dump


class ImagefitError(Exception):
    """A problem with the user's input, stated in one line with the fix."""

    def __init__(self, message: str):
        line = " ".join(str(message).split())  # always one line, whatever the caller wrote
        if len(line) > MAX_LENGTH:
            line = line[:MAX_LENGTH - 40] + " … " + line[-37:]  # the fix is at the end: keep it
        super().__init__(line)
