"""backup: turn a tree into a snapshot."""
