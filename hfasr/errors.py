"""Exceptions raised for bad user input.

Every error names the offending item (file, utterance, config key) so that a user can find and
fix it; the command line prints the message without a traceback and exits with status 2.
"""

from __future__ import annotations


class HfasrError(Exception):
    """Base class of the errors hfasr reports to the user as ``error: <message>``."""


class ConfigError(HfasrError):
    """A malformed config file, an unknown key, or a value of the wrong type."""


class DataError(HfasrError):
    """A missing corpus directory, an unreadable or truncated audio file, a bad transcript."""
