"""``python -m moto.server``, with its conditional writes made atomic as on AWS.

AWS S3 evaluates ``If-None-Match: *`` atomically with the write it guards: of
concurrent writers of one new key exactly one succeeds. moto (5.2) checks whether
the key exists and then stores it without a lock, so two concurrent writers can both
succeed there, which AWS never allows: ``test_concurrent_conflicting_writes_keep_
exactly_one[s3-moto]`` failed that way in a CI run on 2026-12-07 (1,200 stress trials
had passed before). The tests mean to check how cas uses a real server's guarantee,
not moto's race, so this launcher serializes moto's object puts and multipart
completions (the two handlers that evaluate the condition) behind one lock, then runs
moto's own server entry point with the given arguments.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from moto import server
from moto.s3.responses import S3Response

_WRITES = threading.Lock()


def _serialized(method: Any) -> Any:
    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        with _WRITES:
            return method(*args, **kwargs)

    return run


S3Response.put_object = _serialized(S3Response.put_object)  # type: ignore[method-assign]
S3Response._key_response_post = _serialized(S3Response._key_response_post)  # type: ignore[method-assign]

if __name__ == "__main__":
    server.main()
