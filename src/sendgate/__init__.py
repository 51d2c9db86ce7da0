"""sendgate: a secure, fast mail submission agent."""

__version__ = "0.1.0"
