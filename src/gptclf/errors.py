"""User-facing errors: the CLI prints their message as one line and exits with code 2."""


class GptclfError(Exception):
    """A problem with the user's input (file, flag, checkpoint), not a bug in gptclf."""
