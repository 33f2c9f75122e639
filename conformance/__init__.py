"""sockconf: a clause-by-clause conformance suite for socket programs."""

__version__ = "0.1.0"
