"""Exceptions of lipbound.

`LipboundError` is bad input from the user (a missing file, an unsupported operator, NaN weights, a
wrong shape, an unknown method): the CLI prints its one-line message and exits with status 2.
`Unsupported` and `MethodFailed` are raised inside a method and turned by the API into a `Bound` with
status ``unsupported`` or ``failed`` (so that `compare` goes on with the other methods).
"""


class LipboundError(Exception):
    """Bad input: the message is one line that names the problem."""


class UnsupportedOperator(LipboundError):
    """An operator that the reader or a method cannot handle."""


class Unsupported(Exception):
    """Raised by a method: this network / norm / region is outside what the method can bound."""


class MethodFailed(Exception):
    """Raised by a method: a numerical failure, so no bound is claimed."""
