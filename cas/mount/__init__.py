"""The read-only view of snapshots and its FUSE adapter."""
