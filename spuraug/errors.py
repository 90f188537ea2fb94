"""The error a user can fix, shared by the CLI and the modules its commands call.

It lives here, below every command module, so that they can raise it without importing
the CLI (which imports them).
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input; printed as one line, exit code 2."""
