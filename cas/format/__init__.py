"""Pure encoders and decoders of every object a repository stores (no I/O).

Each decoder takes bytes and returns objects or raises a cas error
(FormatError, IntegrityError, UnsupportedVersion): nothing else escapes,
so they can be fuzzed and checked against spec/vectors.
"""

# The repository format ``init`` writes (spec §16); version 1 repositories stay readable
# and are written as version 1.
FORMAT_VERSION = 2
