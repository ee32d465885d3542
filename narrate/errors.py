"""Errors with actionable messages, and the process exit codes they map to.

Exit codes are part of the interface: Kubernetes Job policies act on them (see README).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_FAILED = 1  # some rows or books failed; the rest were processed
EXIT_USAGE = 2  # bad arguments or an unreadable manifest: retrying will not help
EXIT_INFRA = 3  # storage, database, model or device trouble: a retry may help
EXIT_INTERRUPTED = 75  # SIGTERM/SIGINT: state is resumable (EX_TEMPFAIL)


class NarrateError(Exception):
    """Base class: `message` says what went wrong, `hint` what to do about it."""

    exit_code = EXIT_INFRA

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\nhint: {self.hint}" if self.hint else self.message


class UsageError(NarrateError):
    exit_code = EXIT_USAGE


class ManifestError(UsageError):
    """The manifest as a whole cannot be read (bad rows are RowErrors, not exceptions)."""


class ModelError(NarrateError):
    """A model (CSM, Mimi, AudioSeal, eSpeak) cannot be loaded."""


class EngineError(NarrateError):
    """Synthesis failed in a way that is not about one chunk."""


class InfrastructureError(NarrateError):
    """Not about one book: credentials, permissions, a missing bucket or database, a service
    still unavailable after retries. Every book would fail the same way, so the run stops
    (exit 3) after flushing what is done instead of failing the catalog book by book."""


class StorageError(NarrateError):
    """A problem with one object (its name, a race, a refused write): that book fails."""


class StorageUnusable(StorageError, InfrastructureError):
    """The store itself cannot be used: see InfrastructureError."""


class DatabaseError(NarrateError):
    pass


class DatabaseUnusable(DatabaseError, InfrastructureError):
    """The database cannot be used at all: see InfrastructureError."""


class AudioError(NarrateError):
    """A book's audio failed a post-processing check (silence, integrity gate)."""


def first_line(exc: BaseException) -> str:
    """An exception's message in one line (its first), or its type when it has none."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
