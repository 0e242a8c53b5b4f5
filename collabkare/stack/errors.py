"""The one error the stack raises: its message is a single line meant to be printed instead of a traceback."""


class StackError(Exception):
    """Infrastructure could not be started, or a piece of it stopped working; the message says what to do."""
