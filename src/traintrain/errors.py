"""Errors a face shows to the user as one line (exit code 2), never as a traceback."""


class UserError(Exception):
    """Bad input the user can fix: the message names the problem and the fix."""
