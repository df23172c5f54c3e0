"""The one exception type the command-line scripts turn into a one-line message."""


class CharRNNError(Exception):
    """A problem the user can fix; its message names the problem and the fix."""
