"""restore: turn a snapshot back into a tree."""
