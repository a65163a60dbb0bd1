"""Pure encoders and decoders of every object a repository stores (no I/O).

Each decoder takes bytes and returns objects or raises a cas error
(FormatError, IntegrityError, UnsupportedVersion): nothing else escapes,
so they can be fuzzed and checked against spec/vectors.
"""

FORMAT_VERSION = 1
