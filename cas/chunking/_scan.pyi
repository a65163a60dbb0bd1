# The optional C accelerator (_scan.c); absent when it was not built.
from _typeshed import ReadableBuffer

def first_below(buf: ReadableBuffer, start: int, n: int, stride: int, threshold: int, /) -> int: ...
