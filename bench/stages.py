#!/usr/bin/env python3
"""Where a connection's server CPU goes: the same load cut short at each stage of a session.

One throw-away sendgate instance, made as compare.py makes one (the reference's certificate,
a plaintext smarthost route to the reference's sink), serves rounds of N connections from 16
concurrent clients (two processes on uvloop), each connection going as far as its stage:

    0  connect, banner, QUIT                       (accept, admission, caps, close)
    1  + EHLO, STARTTLS, the TLS handshake, EHLO
    2  + AUTH PLAIN                                 (the login cache answers after the first)
    3  + MAIL, RCPT, DATA and a 10 KB message       (spooled, then relayed to the sink)

and prints the server's CPU per connection (every process of its group, from /proc), so the
difference between two stages is what that stage costs. Needs the reference server running
for its certificate and sink (see bench/README.md). Only loopback is used.

    .venv/bin/python bench/stages.py --connections 3000 --rounds 2
    .venv/bin/python bench/stages.py --python ../base/.venv/bin/python   # another checkout
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import multiprocessing
import os
import signal
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import compare  # noqa: E402  (bench/ is run as scripts, not installed)

CLIENTS = 16
PROCESSES = 2
LINES = 130  # of 78 octets: a message of about 10 KB


@dataclass(frozen=True)
class Words:
    """What a client says: its AUTH line, its pipelined envelope, its message with the dot."""

    auth: bytes
    envelope: bytes
    message: bytes

    @classmethod
    def of(cls, user: str, rcpt: str) -> Words:
        secret = base64.b64encode(f"\0{user}\0{compare.PASSWORD}".encode())
        head = f"From: <{user}>\r\nTo: <{rcpt}>\r\nSubject: stage\r\n\r\n".encode()
        return cls(
            auth=b"AUTH PLAIN " + secret + b"\r\n",
            envelope=f"MAIL FROM:<{user}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode(),
            message=head + (b"x" * 76 + b"\r\n") * LINES + b".\r\n",
        )


async def _reply(reader: asyncio.StreamReader, expected: int) -> None:
    while True:
        line = await reader.readline()
        if line[3:4] != b"-":
            break
    if not line.startswith(str(expected).encode()):
        raise SystemExit(f"expected {expected}, got {line!r}")


async def _session(stage: int, port: int, ctx: ssl.SSLContext, words: Words) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await _reply(reader, 220)
    if stage >= 1:
        writer.write(b"EHLO stages.example.test\r\n")
        await _reply(reader, 250)
        writer.write(b"STARTTLS\r\n")
        await _reply(reader, 220)
        await writer.start_tls(ctx, server_hostname="msa.example.test")
        writer.write(b"EHLO stages.example.test\r\n")
        await _reply(reader, 250)
    if stage >= 2:
        writer.write(words.auth)
        await _reply(reader, 235)
    if stage >= 3:
        writer.write(words.envelope)  # MAIL, RCPT, DATA pipelined
        for code in (250, 250, 354):
            await _reply(reader, code)
        writer.write(words.message)
        await _reply(reader, 250)
    writer.write(b"QUIT\r\n")
    await _reply(reader, 221)
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):  # the server's close came first
        await writer.wait_closed()


def _client(stage: int, port: int, count: int, words: Words) -> None:
    import uvloop

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the reference's self-signed certificate

    async def main() -> None:
        left = [count]

        async def one_client() -> None:
            while left[0] > 0:
                left[0] -= 1
                await _session(stage, port, ctx, words)

        await asyncio.gather(*(one_client() for _ in range(CLIENTS // PROCESSES)))

    uvloop.run(main())


def run(stage: int, port: int, connections: int, words: Words) -> None:
    context = multiprocessing.get_context("fork")
    share = connections // PROCESSES
    workers = [
        context.Process(target=_client, args=(stage, port, share, words)) for _ in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
        if worker.exitcode != 0:
            raise SystemExit(f"a client process failed (exit {worker.exitcode})")


def stage_list(text: str) -> list[int]:
    """`--stages`: stage numbers 0-3, comma-separated."""
    try:
        stages = [int(stage) for stage in text.split(",")]
    except ValueError:
        stages = []
    if not stages or any(stage not in range(4) for stage in stages):
        raise argparse.ArgumentTypeError(f"not stages 0-3 separated by commas: {text!r}")
    return stages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", "-n", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--stages", type=stage_list, default=[0, 1, 2, 3], help="comma-separated, 0-3"
    )
    parser.add_argument("--port", type=int, default=11787)
    parser.add_argument(
        "--python", default=sys.executable, help="the interpreter whose sendgate is measured"
    )
    args = parser.parse_args()
    ref = compare.reference_env()
    words = Words.of(ref["REF_USER"], ref["REF_RCPT"])
    stages: list[int] = args.stages
    with compare.beside_reference(ref, "stages-") as workdir:
        config = compare.make_sendgate(Path(workdir), ref, args.port, python=args.python)
        server = compare.serve(config, python=args.python)
        try:
            run(2, args.port, 200, words)  # warm: the login cache, the spool's stock
            for round_ in range(args.rounds):
                for stage in stages:
                    before, started = compare.group_cpu(server.pid), time.monotonic()
                    run(stage, args.port, args.connections, words)
                    used, wall = compare.group_cpu(server.pid) - before, time.monotonic() - started
                    per = used / args.connections * 1e6
                    rate = args.connections / wall
                    print(f"round {round_} stage {stage}: {per:6.0f} us of server CPU a connection"
                          f"  ({rate:5.0f} connections/s)", flush=True)  # fmt: skip
            compare.settle(compare.queue_dirs(ref, Path(workdir)))  # relayed: nothing left
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
