"""Reusable test kit: S3 server, backend factories (more helpers join it later)."""
