"""What the sending limits cost per accepted message: `SendingLimits.check` on a real store.

One account sends `--messages` messages (each to `--recipients` addresses out of a pool of
`--pool`) with every limit on but high enough never to refuse, from `--threads` threads (as
the spool pool does); prints the wall and CPU time per check. The store is SQLite files, or
with `--redis URL` a Redis (cluster mode; the CPU is this process's only, Redis's is not in it).
With `--pool` at least messages x recipients every message has new recipients, so every one
is a store round trip (no spending from a worker's allowance; see policy.allowance).

    .venv/bin/python bench/quota.py --messages 5000 --recipients 3
    .venv/bin/python bench/quota.py --messages 5000 --pool 15000 --redis redis://127.0.0.1:6379/15
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis

from sendgate.config.schema import SendingLimitsConfig
from sendgate.log import EventLog
from sendgate.policy.quota import SendingLimits
from sendgate.store.cluster.redis_limits import RedisLimitStore
from sendgate.store.limits import LimitStore
from sendgate.store.local.limits import LocalLimitStore
from sendgate.store.local.users import LocalUserStore
from sendgate.store.users import UserRecord

HIGH = 100_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--recipients", type=int, default=3)
    parser.add_argument("--pool", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--redis", metavar="URL", help="a Redis to use (it is emptied first)")
    args = parser.parse_args()
    config = SendingLimitsConfig(
        messages_per_hour=HIGH,
        messages_per_day=HIGH,
        recipients_per_message=HIGH,
        recipients_per_day=HIGH,
        new_recipients_per_day=HIGH,
    )
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        users = LocalUserStore(root / "users.db")
        limits: LimitStore
        if args.redis:
            limits = RedisLimitStore(args.redis)
            redis.Redis.from_url(args.redis).flushdb()
        else:
            limits = LocalLimitStore(root / "limits.db")
        quota = SendingLimits(limits, users, config, EventLog(io.StringIO()))
        user = UserRecord("alice@example.org", "x", ("alice@example.org",), 1)
        batches = [
            tuple(
                f"r{(number * args.recipients + k) % args.pool}@example.net"
                for k in range(args.recipients)
            )
            for number in range(args.messages)
        ]
        wall, cpu = time.perf_counter(), time.process_time()
        if args.threads == 1:  # no pool: its handoff is not the limits' cost
            verdicts = [quota.check(user, batch) for batch in batches]
        else:
            with ThreadPoolExecutor(args.threads) as pool:
                verdicts = list(pool.map(lambda batch: quota.check(user, batch), batches))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert all(verdict.allowed for verdict in verdicts)
        users.close()
        limits.close()
    per = 1e6 / args.messages
    store = "redis" if args.redis else "sqlite"
    print(
        f"{store}: {args.messages} checks, {args.recipients} recipients each,"
        f" pool {args.pool}, {args.threads} threads:"
        f" {wall * per:.0f} us wall, {cpu * per:.0f} us CPU per message"
    )


if __name__ == "__main__":
    main()
