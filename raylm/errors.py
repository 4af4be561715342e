"""Errors a user can fix: the CLI prints their one-line message and exits with code 2."""


class InputError(ValueError):
    """An input, output or run state that cannot be used; the message is one line for the user."""
