"""Assembles a running sendgate from a Config: sockets, TLS, stores, policy and workers.

Order matters: everything shared by the workers (listening sockets, connection counters, TLS
context and its ticket keys, the stores' preparation) is made before the fork; everything with
threads or open database handles (argon2 and fsync pools, store handles) is made inside each
process after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
import stat
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sendgate.audit.listeners import Listener as AuditedListener
from sendgate.audit.schedule import run_auditor
from sendgate.config.schema import Config
from sendgate.config.unsafe import unsafe_settings
from sendgate.delivery.plan import load_relays
from sendgate.delivery.runner import run_delivery, trust_store
from sendgate.delivery.shares import runner_count, runner_settings
from sendgate.dkim.keys import load_keys
from sendgate.dkim.reload import KeyReloader
from sendgate.dkim.signer import DkimSigner
from sendgate.errors import SendgateError, SpoolError
from sendgate.log import EventLog
from sendgate.policy.auth import Authenticator
from sendgate.policy.dovecot import DOVECOT_THREADS, DovecotAuth
from sendgate.policy.guard import LoginGuard
from sendgate.policy.login import Logins
from sendgate.policy.notice import SignInNotices
from sendgate.policy.passwords import new_hasher
from sendgate.policy.quota import SendingLimits
from sendgate.server.caps import RATE_WINDOW, ConnectionCaps
from sendgate.server.descriptors import connection_budget, raise_limit
from sendgate.server.memory import return_freed_memory
from sendgate.server.notify import systemd_notifier
from sendgate.server.privileges import become
from sendgate.server.supervisor import RESEND_EVERY, Supervisor, bind
from sendgate.server.tls import TlsContextHolder
from sendgate.server.worker import Listener, Timeouts, Worker
from sendgate.smtp.session import SessionSettings
from sendgate.smtp.spill import SESSION_HOLD_MAX
from sendgate.store.backends import Backends, Stores, installation_secret, mta_sts_path
from sendgate.submission import Submission
from sendgate.web.listener import HttpListener, acceptor_beat, runner_beat

# fsync is I/O-bound: enough threads that concurrent sessions' fsyncs overlap on the disk.
SPOOL_THREADS = 16


def session_settings(cfg: Config) -> SessionSettings:
    return SessionSettings(
        hostname=cfg.hostname,
        max_message_size=cfg.limits.max_message_size,
        max_recipients=cfg.limits.max_recipients,
        max_errors=cfg.limits.max_errors,
        tls_available=True,
        auth_required=cfg.auth.required,
        auth_without_tls=cfg.auth.allow_plaintext,
    )


def run_loop(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a coroutine on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def logins(
    cfg: Config,
    stores: Stores,
    authenticator: Authenticator,
    signer: DkimSigner | None,
    log: EventLog,
) -> Logins:
    """The login path of one worker: the guard, its store handles and the sign-in notices."""
    guard = LoginGuard(stores.limits, stores.users, cfg.login_limits, installation_secret(cfg))
    notices = SignInNotices(
        cfg.hostname, stores.queue, stores.limits, signer, cfg.sign_in_notice, time.time, log
    )
    dovecot = DovecotAuth(cfg.auth.dovecot_socket) if cfg.auth.backend == "dovecot" else None
    return Logins(
        guard,
        authenticator,
        stores.users,
        cfg.login_limits,
        stores.limits.now,
        notices,
        dovecot=dovecot,
    )


@dataclass(slots=True)
class _Bound:
    """The sockets `serve` listens on, bound while it may still be root."""

    listeners: list[Listener] = field(default_factory=list)
    audited: list[AuditedListener] = field(default_factory=list)  # for the scheduled audit
    described: list[tuple[socket.socket, int, bool]] = field(default_factory=list)  # for /http
    http: socket.socket | None = None


def _bind_all(cfg: Config, log: EventLog) -> _Bound:
    bound = _Bound()
    addresses = [(False, a) for a in cfg.listen.submission]
    addresses += [(True, a) for a in cfg.listen.submissions]
    for implicit, hostport in addresses:
        sock = _bind(hostport.host, hostport.port)
        host, port = sock.getsockname()[:2]
        bound.listeners.append(Listener(sock, implicit))
        bound.audited.append(AuditedListener(host, port, implicit))
        bound.described.append((sock, port, implicit))
        _listening(log, "submissions" if implicit else "submission", host, port)
    if cfg.http.listen is not None:
        bound.http = _bind(cfg.http.listen.host, cfg.http.listen.port)
        _listening(log, "http", *bound.http.getsockname()[:2])
    if cfg.sendmail.socket is not None:
        bound.listeners.append(Listener(_bind_local(cfg.sendmail.socket), False, local=True))
        log.event("listening", kind="sendmail", address=str(cfg.sendmail.socket))
    return bound


def _bind_local(path: Path) -> socket.socket:
    """The sendmail socket: any local user may connect (mode 0666); the peer's user id decides
    what it may do. A socket left by an earlier run is replaced, anything else is not."""
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise SendgateError(f"cannot listen on {path}: {exc.strerror or exc}") from exc
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o666)  # noqa: S103 - on purpose: the peer's uid is the check
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise SendgateError(f"cannot listen on {path}: {exc.strerror or exc}") from exc
    return sock


def _bind(host: str, port: int) -> socket.socket:
    try:
        return bind(host, port)
    except OSError as exc:
        shown = _address(host, port)
        raise SendgateError(f"cannot listen on {shown}: {exc.strerror or exc}") from exc


def _listening(log: EventLog, kind: str, host: str, port: int) -> None:
    log.event("listening", kind=kind, address=_address(host, port))


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve(cfg: Config, log: EventLog, config_path: Path) -> int:
    """Run the server until SIGTERM; returns the process exit code."""
    for unsafe in unsafe_settings(cfg):
        log.event(
            "unsafe_override", "warning", setting=unsafe.override, description=unsafe.description
        )
    # What the configuration names is checked before any port is bound.
    relays = load_relays(cfg.delivery.routes)
    trust_store(cfg)  # refuse a bad delivery.ca_file now, not in the runner after the fork
    sockets = _bind_all(cfg, log)
    if cfg.service.user:
        switched = become(cfg.service.user)
        if switched is not None:
            log.event("user", user=cfg.service.user, uid=switched[0], gid=switched[1])
            trust_store(cfg)  # again: the runner reads it as this user
    elif os.geteuid() == 0:
        log.event("running_as_root", "warning", advice="set service.user (or User= under systemd)")
    web = HttpListener(cfg, log, sockets.http) if sockets.http is not None else None
    backends = Backends(cfg)
    delivery_runners = runner_count(cfg.delivery, os.cpu_count())
    # Schemas, directories, crash recovery, announce pipes: once, before forking.
    recovered = backends.prepare(delivery_runners)
    admin = backends.open("admin")
    try:
        queued = len(admin.queue.ids())
    finally:
        admin.close()
    log.event(
        "spool_swept",
        tmp_removed=recovered.removed_partial,
        restored=recovered.restored,
        corrupt=",".join(recovered.corrupt),
        queued=queued,
    )
    keys = load_keys(cfg.dkim.key_dir)
    # Built even without keys: SIGHUP may bring the first ones.
    signer = DkimSigner(keys)
    reload_keys = KeyReloader(cfg.dkim.key_dir, signer, log)
    for key in keys:
        log.event("dkim_key", domain=key.domain, selector=key.selector, algorithm=key.algorithm)
    tls = TlsContextHolder(cfg.tls.certificates, cfg.tls.min_version)
    listeners, audited, bound = sockets.listeners, sockets.audited, sockets.described
    workers = cfg.listen.workers or os.cpu_count() or 1
    return_freed_memory()  # inherited by the workers
    descriptors = raise_limit()
    per_worker = connection_budget(descriptors)
    log.event(
        "descriptors",
        "warning" if per_worker * workers < cfg.limits.max_connections else "info",
        limit=descriptors,
        connections_per_worker=per_worker,
    )
    limits = cfg.limits
    caps = ConnectionCaps(
        workers,
        limits.max_connections,
        limits.max_connections_per_ip,
        max(1, int(limits.max_connections * limits.unauthenticated_share)),
        math.ceil(limits.unauthenticated_rate_per_ip * RATE_WINDOW / 60),
    )
    settings = session_settings(cfg)
    # Room in every worker for the most one session holds: a whole message up to the spill
    # threshold (with what DATA's dot-stuffing may add), or a long header section and a block.
    session_most = min(limits.max_message_size, SESSION_HOLD_MAX) + (128 << 10)
    message_memory = max(limits.message_memory // workers, session_most)
    timeouts = Timeouts(
        command=limits.command_timeout,
        pressure_command=limits.pressure_command_timeout,
        session=limits.session_timeout,
        handshake=limits.handshake_timeout,
        shutdown_grace=limits.shutdown_grace,
        reload_interval=cfg.tls.reload_interval,
    )

    # The children after the acceptors, in this order.
    runners = [
        *(["delivery"] * delivery_runners),
        *(["audit"] if cfg.audit.interval else []),
        *(["http"] if web else []),
    ]

    def run_child(index: int) -> int:
        role = runners[index - workers] if index >= workers else "acceptor"
        if role == "http":
            assert web is not None
            log.context = {"runner": "http"}
            return web.run(log, backends, bound, workers, delivery_runners)
        if role == "audit":
            log.context = {"runner": "audit"}
            return run_auditor(cfg, config_path, log, backends.open_users, audited)
        if role == "delivery":
            runner = index - workers
            log.context = {"runner": "delivery"}
            if delivery_runners > 1:
                log.context["share"] = f"{runner + 1}/{delivery_runners}"
            # A child started after a SIGHUP must not sign with the start's keys.
            reload_keys.refresh()
            stores = backends.open("runner", runner)
            try:
                return run_delivery(
                    replace(cfg, delivery=runner_settings(cfg.delivery, runner, delivery_runners)),
                    log,
                    stores.queue,
                    mta_sts_path(cfg),
                    relays,
                    signer,
                    run_loop,
                    reload=reload_keys,
                    chores=[web.heartbeat(runner_beat(runner))] if web else [],
                )
            finally:
                stores.close()
        return run_worker(index)

    def forget(index: int) -> None:
        if index < workers:
            caps.forget_worker(index)

    def run_worker(index: int) -> int:
        caps.worker = index
        log.context = {"worker": index}
        reload_keys.refresh()  # as the runner's
        stores = backends.open("acceptor")
        # Dovecot holds each failure back (auth_failure_delay): its checks wait, not compute.
        threads = cfg.auth.verify_threads if cfg.auth.backend == "local" else DOVECOT_THREADS
        auth_pool = ThreadPoolExecutor(threads, thread_name_prefix="auth")
        spool_pool = ThreadPoolExecutor(SPOOL_THREADS, thread_name_prefix="spool")
        # Wall-clock time: it is also an app password's last use, stored and listed as a date.
        authenticator = Authenticator(
            stores.users, new_hasher(), auth_pool, cfg.auth.cache_ttl, time.time
        )
        submission = Submission(
            hostname=cfg.hostname,
            authenticator=authenticator,
            queue=stores.queue,
            executor=spool_pool,
            log=log,
            clock=time.time,
            received_client_ip=cfg.privacy.received_client_ip,
            signer=signer,
            limits=SendingLimits(stores.limits, stores.users, cfg.sending_limits, log),
            logins=logins(cfg, stores, authenticator, signer, log),
            users=stores.users,
            local_accounts=dict(cfg.sendmail.accounts),
            local_settings=replace(settings, tls_available=False, auth_required=False),
        )
        worker = Worker(
            listeners=listeners,
            settings=settings,
            tls=tls,
            caps=caps,
            handler_factory=submission.admit,
            log=log,
            timeouts=timeouts,
            message_memory=message_memory,
            on_reload=(reload_keys,),
            chores=[web.heartbeat(acceptor_beat(index))] if web else [],
            proxies=cfg.listen.proxy_from,
            local_factory=submission.admit_local,
        )
        # Start a body file now, before serving: the first large message would otherwise pay
        # on the event loop for the queue's set-up (the spool's reaping of a dead process's
        # files, the first stock of fresh files and its directory sync). A full or broken
        # spool is not this moment's problem: each message reports it.
        with contextlib.suppress(SpoolError):
            stores.queue.new_body().discard()
        try:
            run_loop(worker.run)
        finally:
            # Stopping: a repeated SIGTERM (the supervisor's) must not cut the clean-up short.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            auth_pool.shutdown(wait=False, cancel_futures=True)
            spool_pool.shutdown(wait=True)
            stores.close()
        return 0

    log.event("ready", workers=workers, hostname=cfg.hostname)
    supervisor = Supervisor(
        workers,
        run_child,
        log,
        forget,
        runners=len(runners),
        notify=systemd_notifier(),
        resend_after=cfg.limits.shutdown_grace + RESEND_EVERY,
    )
    try:
        return supervisor.run()
    finally:
        backends.close()
