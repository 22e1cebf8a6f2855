"""The one exception type for bad input: a message that names the problem and the fix."""


class AutoDecoError(ValueError):
    """Raised for bad input or a bad checkpoint; the CLI prints it as a one-line error."""
