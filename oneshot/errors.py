"""Errors meant for the person at the keyboard.

A ``UserError`` carries one line that says what is wrong and how to fix it. The CLI prints that line and
exits with status 2; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: an unknown name, a malformed string, a missing file, a NaN loss."""
