"""Browsing snapshots without restoring them: ``ls``, ``find``, ``diff`` and ``dump``.

Written against :class:`cas.protocols.BlobReader` and :mod:`cas.walker` only:
every module here reads trees and blobs, none writes or reaches the repository.
"""
