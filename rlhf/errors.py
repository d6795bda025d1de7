"""Errors meant for the user: the CLI prints them as one line and exits non-zero (no traceback)."""


class UserError(Exception):
    """Bad input or configuration. The message names the problem and the fix (file, line, field)."""


class ConfigError(UserError):
    """A config field is missing, unknown or out of range."""
