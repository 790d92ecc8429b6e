"""The one error type the CLI turns into a short message plus what to do about it."""


class CfError(Exception):
    """A problem the user can act on: `message` says what was wrong, `hint` what to do."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n{self.hint}" if self.hint else self.message
