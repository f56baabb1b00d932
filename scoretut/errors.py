"""The one error type of the library. Library code names the *argument* in backticks (`` `lr` ``);
the command line (:mod:`scoretut.cli`) prints the message with its flag (``--lr``) instead."""


class UsageError(ValueError):
    """Bad input from a user; the message is one line that names the fix."""
