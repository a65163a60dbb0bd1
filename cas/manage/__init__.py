"""Snapshot upkeep: retention policy, statistics, copy, repair."""
