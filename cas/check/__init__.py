"""check: audit a repository, findings as data."""
