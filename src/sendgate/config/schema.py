"""The configuration schema: frozen dataclasses, one per section, as `load_config` returns them.

This is the module the rest of sendgate imports its configuration types from. Each setting's
field carries its default, its rule (a kind, from kinds.py or sections.py) and a one-line doc,
in the field metadata made by `setting(kind, doc)`; the loader, the example file written by
`sendgate init` and docs/config.md are all derived from them, so a setting is described in
exactly one place. A field whose type is another dataclass and that has no kind is a
sub-section, a TOML table of its own.

Every class here is frozen, and secrets are kept out of repr (`RouteConfig.password`). The value
type of addresses, `HostPort`, is defined in kinds.py next to its parser.
"""

# No `from __future__ import annotations`: sections.py tells a sub-section by its field's type,
# which must then be the class itself, not a string.
from dataclasses import dataclass, field
from pathlib import Path

# Re-exported: features import every section class from this module.
from sendgate.config.defences import LoginLimitsConfig as LoginLimitsConfig
from sendgate.config.defences import SendingLimitsConfig as SendingLimitsConfig
from sendgate.config.defences import SignInNoticeConfig as SignInNoticeConfig
from sendgate.config.kinds import (
    Bool,
    Choice,
    Domains,
    Float,
    HostName,
    HostPort,
    HostPortKind,
    HostPorts,
    Int,
    LocalAccounts,
    Networks,
    OptionalHostPort,
    OptionalPath,
    Overrides,
    PathKind,
    Secret,
    StoreUrl,
    Text,
    setting,
)
from sendgate.config.sections import Certificates, Routes
from sendgate.config.unsafe import OVERRIDES

TLS_VERSIONS = ("1.0", "1.1", "1.2", "1.3")
RELAY_TLS = ("starttls", "implicit", "none")
AUTH_BACKENDS = ("local", "dovecot")


@dataclass(frozen=True, slots=True)
class CertPair:
    """A certificate (chain) file and its private key file, as absolute paths after loading."""

    cert: Path = field(
        metadata=setting(PathKind(), "Certificate chain file (PEM), server certificate first.")
    )
    key: Path = field(
        metadata=setting(PathKind(), "Private key file (PEM, unencrypted) for that certificate.")
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenConfig:
    """Where clients connect."""

    submission: tuple[HostPort, ...] = field(
        # Submission is a public service: listening on every interface is the point.
        default=(HostPort("0.0.0.0", 587),),  # noqa: S104
        metadata=setting(
            HostPorts(),
            'STARTTLS listeners (port 587); IPv6 as "[::1]:587"; port 0 takes any free port.',
        ),
    )
    submissions: tuple[HostPort, ...] = field(
        default=(HostPort("0.0.0.0", 465),),  # noqa: S104
        metadata=setting(HostPorts(), "Implicit-TLS listeners (port 465, RFC 8314)."),
    )
    proxy_from: tuple[str, ...] = field(
        default=(),
        metadata=setting(
            Networks(),
            "Proxies (HAProxy...) that open each connection with a PROXY header (version 1 or "
            "2) naming the client, whose address then counts for logs, limits and bans. When "
            "set, every connection must come from these networks with a valid header; others "
            "are closed unanswered.",
        ),
    )
    workers: int = field(
        default=0,
        metadata=setting(Int(0, 64), "Acceptor processes; 0 starts one per CPU core."),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    """Certificates and protocol versions, for STARTTLS and implicit TLS alike."""

    certificates: tuple[CertPair, ...] = field(
        metadata=setting(
            Certificates(CertPair),
            "Certificate and key files, relative to the config file's directory; "
            "one RSA and one ECDSA pair may be given side by side.",
        ),
    )
    min_version: str = field(
        default="1.2",
        metadata=setting(
            Choice(TLS_VERSIONS),
            'Oldest TLS version accepted; "1.0" and "1.1" need the override "tls_below_1_2".',
        ),
    )
    reload_interval: float = field(
        default=60.0,
        metadata=setting(
            Float(0, 86400),
            "Seconds between checks of the certificate files for changes; "
            "0 turns polling off (SIGHUP still reloads).",
        ),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthConfig:
    """How clients authenticate (SMTP AUTH)."""

    required: bool = field(
        default=True,
        metadata=setting(
            Bool(),
            'Refuse mail from clients that have not authenticated; false needs "no_auth".',
        ),
    )
    allow_plaintext: bool = field(
        default=False,
        metadata=setting(
            Bool(), 'Offer AUTH before TLS is up; true needs the override "plaintext_auth".'
        ),
    )
    cache_ttl: float = field(
        default=300.0,
        metadata=setting(
            Float(0, 86400),
            "Seconds a verified login is remembered, to skip argon2; 0 turns the cache off.",
        ),
    )
    verify_threads: int = field(
        default=2,
        metadata=setting(Int(1, 64), "Threads per worker for password verification (argon2)."),
    )
    backend: str = field(
        default="local",
        metadata=setting(
            Choice(AUTH_BACKENDS),
            'Where passwords are checked: "local" (sendgate\'s users, argon2id) or "dovecot" '
            "(an existing Dovecot's auth socket; sendgate's address table, else the login name "
            "itself, still decides who may send as what).",
        ),
    )
    dovecot_socket: Path = field(
        default=Path("/run/dovecot/auth-client"),
        metadata=setting(PathKind(), 'Dovecot\'s auth socket, for backend = "dovecot".'),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    """Sizes, counts and timeouts that bound what clients can use."""

    max_message_size: int = field(
        default=26214400,
        metadata=setting(
            Int(1024, 1073741824), "Largest message accepted, in bytes (announced in EHLO SIZE)."
        ),
    )
    message_memory: int = field(
        default=67108864,
        metadata=setting(
            Int(1048576, 68719476736),
            "Octets of message content held in memory at once, all workers together (each "
            "worker gets its share, and always room for one session's most). A message is "
            "held whole up to 256 KiB; past that its body streams to the spool and only its "
            "header section (at most 1 MiB) stays. A message that does not fit is answered "
            "452 4.3.1, at MAIL FROM if it declared its SIZE. Signing and queueing briefly "
            "need up to about three times what is held.",
        ),
    )
    max_recipients: int = field(
        default=100, metadata=setting(Int(1, 10000), "Most RCPT TO accepted per message.")
    )
    max_errors: int = field(
        default=10,
        metadata=setting(Int(1, 1000), "Protocol errors tolerated before the connection closes."),
    )
    command_timeout: float = field(
        default=300.0,
        metadata=setting(
            Float(1, 3600),
            "Seconds to wait for the next command (RFC 5321 4.5.3.2.7 asks for at least 300).",
        ),
    )
    session_timeout: float = field(
        default=3600.0,
        metadata=setting(Float(1, 86400), "Seconds one connection may last in total."),
    )
    pressure_command_timeout: float = field(
        default=10.0,
        metadata=setting(
            Float(1, 3600),
            "Command timeout of clients not yet logged in while the server is under pressure "
            "(over half of the unauthenticated share, or three quarters of max_connections, "
            "in use).",
        ),
    )
    handshake_timeout: float = field(
        default=10.0,
        metadata=setting(Float(1, 300), "Seconds a client gets to complete its TLS handshake."),
    )
    max_connections: int = field(
        default=1000,
        metadata=setting(
            Int(1, 1000000), "Simultaneous connections, all workers and listeners together."
        ),
    )
    max_connections_per_ip: int = field(
        default=50,
        metadata=setting(
            Int(1, 1000000),
            "Simultaneous connections from one client address (IPv6: one /64); at most "
            "max_connections. Offices behind one NAT address need room.",
        ),
    )
    unauthenticated_rate_per_ip: int = field(
        default=120,
        metadata=setting(
            Int(0, 1000000),
            "Connections per minute from one client address (IPv6: one /64) that end without "
            "a login (handshake floods, probes, failed logins), counted in 10 s windows; past "
            "it the address is refused before any TLS work until the window ends. Clients "
            "that log in never count. 0: no limit.",
        ),
    )
    unauthenticated_share: float = field(
        default=0.5,
        metadata=setting(
            Float(0.05, 1),
            "Share of max_connections that clients not yet logged in may hold; when it is "
            "full, the oldest idle one is closed to make room for a new client.",
        ),
    )
    shutdown_grace: float = field(
        default=30.0,
        metadata=setting(
            Float(0, 3600), "Seconds open sessions get to finish when the server stops."
        ),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivacyConfig:
    """What the headers sendgate adds reveal about the sender."""

    received_client_ip: bool = field(
        default=False,
        metadata=setting(Bool(), "Put the client's IP address in the Received header."),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    """Log output."""

    format: str = field(
        default="kv",
        metadata=setting(Choice(("kv", "json")), "Line format: key=value pairs or JSON."),
    )
    level: str = field(
        default="info",
        metadata=setting(
            Choice(("debug", "info", "warning", "error")), "Least severe level written."
        ),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConfig:
    """Mail for some recipient domains goes through a smarthost instead of their MX hosts."""

    domains: tuple[str, ...] = field(
        metadata=setting(Domains(), 'Recipient domains this route serves; "*" for all.')
    )
    smarthost: HostPort = field(metadata=setting(HostPortKind(), "The relay, HOST:PORT."))
    tls: str = field(
        default="starttls",
        metadata=setting(
            Choice(RELAY_TLS),
            'TLS to the relay, always with certificate checks; "none" needs "plaintext_relay" '
            "unless the relay is on loopback.",
        ),
    )
    username: str = field(default="", metadata=setting(Text(), "AUTH user name, if any."))
    password: str | None = field(
        default=None, repr=False, metadata=setting(Secret(), "AUTH password (prefer a file).")
    )
    password_file: Path | None = field(
        default=None,
        metadata=setting(OptionalPath(), "File whose first line is the AUTH password."),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryConfig:
    """Delivery after the 250: routes, DNS, retries, bounces and outbound TLS policy."""

    hold: bool = field(
        default=False,
        metadata=setting(
            Bool(),
            "Keep accepted mail queued without delivering it (maintenance, or while DNS "
            "and routes are being set up); `sendgate queue` still works.",
        ),
    )
    routes: tuple[RouteConfig, ...] = field(
        default=(),
        metadata=setting(
            Routes(RouteConfig),
            "Smarthost routes by recipient domain; domains no route names go to their MX hosts.",
        ),
    )
    resolver: tuple[HostPort, ...] = field(
        default=(),
        metadata=setting(
            HostPorts(),
            "DNS resolvers as HOST:PORT; empty uses /etc/resolv.conf. DANE needs a validating "
            "resolver (one that sets the AD bit), ideally on loopback.",
        ),
    )
    ca_file: Path | None = field(
        default=None,
        metadata=setting(
            OptionalPath(),
            "Extra trusted CA certificates (PEM) for smarthosts and MTA-STS, added to the "
            "system's.",
        ),
    )
    mta_sts: bool = field(
        default=True, metadata=setting(Bool(), "Honour MTA-STS policies (RFC 8461).")
    )
    dane: bool = field(
        default=True,
        metadata=setting(Bool(), "Honour DANE TLSA records (RFC 7672) that DNSSEC validated."),
    )
    concurrency: int = field(
        default=20, metadata=setting(Int(1, 1000), "Simultaneous outbound transactions.")
    )
    domain_concurrency: int = field(
        default=5,
        metadata=setting(Int(1, 1000), "Simultaneous transactions to one recipient domain."),
    )
    runners: int = field(
        default=0,
        metadata=setting(
            Int(0, 16),
            "Delivery runner processes; 0 starts one per two CPU cores (1 to 4). With the local "
            "queue each runner delivers its own share of the messages (split by queue id); "
            "`concurrency` and `domain_concurrency` are totals divided among the runners, so "
            "there are never more runners than either of them.",
        ),
    )
    lease: float = field(
        default=600.0,
        metadata=setting(
            Float(5, 86400),
            "Seconds a runner holds a message it is delivering (renewed at a third of that while "
            "it works). With a shared queue (store.queue), the mail of a node that died is "
            "taken over by the others this long after its last renewal.",
        ),
    )
    retry_first: float = field(
        default=300.0,
        metadata=setting(Float(1, 86400), "Seconds before the first retry; doubles each time."),
    )
    retry_max: float = field(
        default=7200.0,
        metadata=setting(Float(1, 86400), "Longest wait between two attempts, in seconds."),
    )
    queue_lifetime: float = field(
        default=432000.0,
        metadata=setting(
            Float(60, 8640000),
            "Seconds a message may stay queued before it is returned to the sender (5 days).",
        ),
    )
    delay_warning: float = field(
        default=14400.0,
        metadata=setting(
            Float(0, 8640000),
            "Seconds after which the sender is told once that delivery is delayed; 0 never.",
        ),
    )
    scan_interval: float = field(
        default=5.0,
        metadata=setting(
            Float(0.05, 3600),
            "Seconds between scans of the queue for messages not announced by a worker.",
        ),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class DkimConfig:
    """DKIM signing of outgoing mail (keys made by `sendgate dkim keygen DOMAIN`)."""

    key_dir: Path = field(
        default=Path("dkim"),
        metadata=setting(
            PathKind(),
            "Directory of signing keys, DOMAIN/SELECTOR.rsa.key and DOMAIN/SELECTOR.ed25519.key; "
            "`sendgate dkim keygen DOMAIN` writes them.",
        ),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SendmailConfig:
    """The local submission socket `sendgate sendmail` (and a `sendmail` link to it) uses."""

    socket: Path | None = field(
        default=None,
        metadata=setting(
            OptionalPath(),
            "A Unix socket for local programs (cron, PHP mail(), scripts), e.g. "
            '"/run/sendgate/sendmail.sock" (its directory must exist); "" turns it off. '
            "`sendgate sendmail` finds it there unless $SENDGATE_SENDMAIL_SOCKET says otherwise.",
        ),
    )
    accounts: tuple[tuple[str, str], ...] = field(
        default=(),
        metadata=setting(
            LocalAccounts(),
            "Which local user sends as which account, known from the socket's peer "
            '("www-data=web@example.org"); that account\'s addresses and limits apply. Other '
            "local users are refused.",
        ),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreConfig:
    """Where the shared state lives: this host (one node), or services several nodes share."""

    limits: str = field(
        default="local",
        metadata=setting(
            StoreUrl(("redis", "rediss", "unix")),
            'The counters, rate budgets and bans of the defences: "local" (SQLite in '
            'data_dir), or a Redis every node shares ("redis://host:6379/0"; the URL may '
            "hold a password: keep this file private). While Redis cannot be reached, logins "
            "and messages get a temporary refusal (454/451), never an uncounted pass.",
        ),
    )
    users: str = field(
        default="local",
        metadata=setting(
            StoreUrl(("postgresql", "postgres")),
            'The users, addresses, app passwords, known networks and flags: "local" (SQLite in '
            'data_dir), or a PostgreSQL every node shares ("postgresql://sendgate@db/sendgate";'
            " a password in the URL makes this file a secret: keep it private, or use "
            "~/.pgpass). Create or upgrade its tables with `sendgate db migrate`; a node refuses "
            "to start on a schema version it does not know. While PostgreSQL cannot be reached, "
            "logins get 454 4.7.0 (try again later).",
        ),
    )
    queue: str = field(
        default="local",
        metadata=setting(
            StoreUrl(("postgresql", "postgres")),
            'The queue of accepted mail: "local" (the spool in data_dir, delivered by this node '
            "alone), or a PostgreSQL every node shares (the same database as store.users or "
            "another). A message is committed there before its 250 (PostgreSQL's "
            "synchronous_commit; with an asynchronous replica a failover may lose the last "
            "commits), and any node's runner delivers it, under a lease with a fencing token: "
            "mail a dead node accepted is delivered by the others once its lease runs out. "
            "While PostgreSQL cannot be reached, messages get 451 4.3.0.",
        ),
    )
    node_name: str = field(
        default="",
        metadata=setting(
            Text(),
            "This node's name in the shared queue's leases and in `sendgate cluster status` "
            "(empty: the host name). Give nodes on one host names of their own.",
        ),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceConfig:
    """How `serve` runs as a process."""

    user: str = field(
        default="",
        metadata=setting(
            Text(),
            "Started as root, `serve` binds its ports and then runs as this user for good (the "
            'data directory, keys and certificates must be its own); "" keeps the user it '
            "was started as. Under systemd, set User= in the unit instead.",
        ),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpConfig:
    """The HTTP listener: metrics, health and mail client set-up (off unless `listen` is set)."""

    listen: HostPort | None = field(
        default=None,
        metadata=setting(
            OptionalHostPort(),
            "Plain HTTP on HOST:PORT for /metrics (Prometheus), /healthz and the mail client "
            "set-up documents; meant for loopback or behind an HTTPS proxy (another address "
            'needs "public_http" in unsafe_overrides). "" turns it off.',
        ),
    )
    imap: HostPort | None = field(
        default=None,
        metadata=setting(
            OptionalHostPort(),
            "An IMAP server (implicit TLS, e.g. imap.example.org:993) the set-up documents offer "
            "for incoming mail; none is invented when empty. Apple profiles need one.",
        ),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditConfig:
    """The audit `serve` runs of its own setup (`sendgate audit` runs it on demand)."""

    interval: float = field(
        default=86400.0,
        metadata=setting(
            Float(0, 31536000),
            "Seconds between audits while serving, the first at start (findings are logged as "
            "event=audit_finding); 0 turns the scheduled audit off.",
        ),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole configuration, as returned by `load_config`."""

    hostname: str = field(
        metadata=setting(
            HostName(),
            "This server's name (FQDN), used in the banner, EHLO reply, Received and Message-ID.",
        ),
    )
    data_dir: Path = field(
        default=Path("data"),
        metadata=setting(
            PathKind(), "Directory for the spool and the local store, relative to this file."
        ),
    )
    unsafe_overrides: tuple[str, ...] = field(
        default=(),
        metadata=setting(
            Overrides(tuple(OVERRIDES)), "Unsafe settings allowed on purpose; logged at start."
        ),
    )
    listen: ListenConfig = field(default_factory=ListenConfig)
    tls: TlsConfig
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    login_limits: LoginLimitsConfig = field(default_factory=LoginLimitsConfig)
    sending_limits: SendingLimitsConfig = field(default_factory=SendingLimitsConfig)
    sign_in_notice: SignInNoticeConfig = field(default_factory=SignInNoticeConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    dkim: DkimConfig = field(default_factory=DkimConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    sendmail: SendmailConfig = field(default_factory=SendmailConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    log: LogConfig = field(default_factory=LogConfig)
