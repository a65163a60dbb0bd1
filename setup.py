"""The optional C accelerator of the window chunker's scan (cas/chunking/_scan.c).

Everything else is in pyproject.toml. ``optional=True``: without a compiler (or
Python's headers) the build of the extension fails with a warning and the
install goes on; cas then uses its pure-Python scan, with the same cut points.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("cas.chunking._scan", ["cas/chunking/_scan.c"], optional=True),
    ]
)
