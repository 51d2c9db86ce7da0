"""The file descriptor limit: raised at start, and a reserve kept out of the connections' reach.

A worker that runs out of descriptors fails everything at once (accepting, the spool, the
store, its log) and, on asyncio's accept path, silently. So the soft limit is raised to the
hard one before the workers fork, and each worker admits connections only while RESERVE
descriptors stay free for its own files.
"""

from __future__ import annotations

import resource

RESERVE = 128  # spool and fresh files, SQLite, thread pools, pipes, listeners, the log
_CEILING = 1 << 20  # when the hard limit is unlimited


def raise_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # a container may forbid it: keep the limit we have, and say so
    return _CEILING if soft == resource.RLIM_INFINITY else soft


def connection_budget(limit: int) -> int:
    """Connections one worker may hold with `limit` descriptors (at least one)."""
    return max(1, limit - RESERVE)
