"""The one error type of the library: bad input from a user.

Library code names the *argument* in the message (``lr``, ``steps``); the command line
(:mod:`scoretut.cli`) maps argument names to its command-line flags before printing the one line.
"""


class UsageError(ValueError):
    """Bad input from a user; the message is one line that names the fix."""
