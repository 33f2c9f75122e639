"""sockconf: a clause-by-clause conformance suite for socket programs.

PYTEST_DONT_REWRITE: `sockconf check` imports this package before it starts
pytest, which would then warn that it cannot rewrite it (the entry-point plugin's
package is marked for assertion rewriting); nothing here needs rewriting.
"""

__version__ = "0.1.0"
