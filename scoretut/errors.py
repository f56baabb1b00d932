"""The one error type of the library. Library code names the *argument* in backticks (`` `lr` ``);
the command line (:mod:`scoretut.cli`) prints the message with its own flag for it."""


class UsageError(ValueError):
    """Bad input from a user; the message is one line that names the fix."""
