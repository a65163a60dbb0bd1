"""The repository: the only way to stored objects."""
