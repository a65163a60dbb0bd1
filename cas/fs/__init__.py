"""The local filesystem: metadata, descriptors, path patterns."""
