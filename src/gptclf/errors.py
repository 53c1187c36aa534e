"""User-facing errors: the CLI prints their message as one line and exits with code 2."""


class GptclfError(Exception):
    """A problem with the user's input (file, flag, checkpoint), not a bug in gptclf."""


class Interrupted(Exception):
    """A run stopped by a signal (SIGINT/SIGTERM) after saving what it could: the CLI prints the
    message as one line and exits with `exit_code` (128 + the signal number)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
