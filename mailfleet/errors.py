"""One error hierarchy; only the CLI turns these into messages and exit codes."""

from __future__ import annotations


class MailfleetError(Exception):
    """A failure the user can act on. `hint` says what to do next."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(MailfleetError):
    """Bad arguments or bad input files: nothing was changed."""

    exit_code = 2


class ConfigError(UsageError):
    """mailfleet.toml is missing or invalid."""


class LabError(MailfleetError):
    """The local lab could not be brought up, reached or torn down."""


class DeployError(MailfleetError):
    """An operation failed on a host."""
