"""cas: content-addressed, deduplicating, encrypted snapshot backups."""

__version__ = "0.1.0"
