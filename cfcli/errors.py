"""The one error type the front ends turn into a short message plus what to do about it (`explain` maps the other
errors a user can act on to it)."""


class CfError(Exception):
    """A problem the user can act on: `message` says what was wrong, `hint` what to do."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n{self.hint}" if self.hint else self.message


def explain(exc: BaseException) -> CfError | None:
    """The message and hint for an error a user can act on that is not a CfError (the GPU out of memory, an OS
    error with a reason), None for a bug. Every front end shows errors through it."""
    if isinstance(exc, CfError):
        return exc
    if type(exc).__name__ == "OutOfMemoryError":
        return CfError("the GPU ran out of memory",
                       "lower --frames or the resolution (a smaller preset), use --dtype bfloat16, or close other "
                       "programs using the GPU")
    if isinstance(exc, OSError) and exc.strerror:
        return CfError(f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else ""),
                       "check the path and its permissions")
    return None
