"""Create a new instance directory with a config, a data directory and TLS files (`sendgate init`).

Security: the host name and addresses come from the command line and are checked with the same
parsers as the config loader before anything is written. Everything is written inside the
instance directory only: the directory and data/ are created 0700, the config and the private
key 0600, whatever the umask. An existing sendgate.toml or generated key is never overwritten,
and the finished config must pass `load_config`, unsafe gate included, or it is removed again.
"""

import os
import socket
from pathlib import Path

from sendgate import certs
from sendgate.config.kinds import HostPort, is_loopback, parse_hostname
from sendgate.config.load import load_config
from sendgate.config.render import render_example
from sendgate.config.schema import RouteConfig
from sendgate.errors import ConfigError, UserError
from sendgate.fsutil import fsync_dir, write_file_durably

CONFIG_NAME = "sendgate.toml"


def init_instance(
    directory: Path,
    *,
    hostname: str,
    submission: str,
    submissions: str,
    cert: Path | None = None,
    key: Path | None = None,
    smarthost: str | None = None,
    smarthost_tls: str = "starttls",
    http: str | None = None,
    cluster: str | None = None,
    redis: str | None = None,
) -> Path:
    """Create `directory` with sendgate.toml, data/ and (unless cert and key are given) tls/.

    `cluster` (a PostgreSQL URL) becomes store.users and store.queue, `redis` store.limits;
    the configuration's own checks judge them (an unsafe one leaves no file behind).

    Given cert and key files are referenced by absolute path, not copied. Returns the config
    path; raises UserError (or TlsConfigError/ConfigError) with one line naming what is wrong.
    """
    _check_options(hostname, submission, submissions)
    routes = _smarthost_routes(smarthost, smarthost_tls)
    http_listen = _http_listen(http)
    if (cert is None) != (key is None):
        raise UserError("--cert and --key must be given together")
    config_path = directory / CONFIG_NAME
    if config_path.exists() or config_path.is_symlink():
        raise UserError(f"{config_path}: already exists; not overwriting it")
    if cert is not None and key is not None:
        _check_given_pair(cert, key)

    _make_private_dir(directory, parents=True)
    _make_private_dir(directory / "data")
    if cert is None or key is None:
        cert_text, key_text = _generate_pair(directory, hostname)
    else:
        # Absolute, because the config resolves relative paths against its own directory.
        cert_text, key_text = str(cert.absolute()), str(key.absolute())

    stores = {}
    if cluster is not None:
        stores = {"store.users": cluster, "store.queue": cluster}
    if redis is not None:
        stores["store.limits"] = redis
    text = render_example(
        hostname, [submission], [submissions], cert_text, key_text, routes, http_listen, stores
    )
    try:
        write_file_durably(config_path, text.encode("utf-8"), exclusive=True, mode=0o600)
    except FileExistsError:
        raise UserError(f"{config_path}: already exists; not overwriting it") from None
    except OSError as error:
        raise UserError(f"{config_path}: cannot write: {error.strerror or error}") from None
    fsync_dir(directory)
    try:
        load_config(config_path)
    except ConfigError:
        # Leave no config behind that `serve` would refuse anyway.
        config_path.unlink()
        raise
    return config_path


def default_hostname() -> str:
    """This machine's fully qualified name, or "localhost" when that is not a valid host name."""
    try:
        return parse_hostname(socket.getfqdn())
    except ValueError:
        return "localhost"


def _check_options(hostname: str, submission: str, submissions: str) -> None:
    try:
        parse_hostname(hostname)
    except ValueError as error:
        raise UserError(f"--hostname: {error}") from None
    for option, value in (("--submission", submission), ("--submissions", submissions)):
        try:
            HostPort.parse(value)
        except ValueError as error:
            raise UserError(f"{option}: {error}") from None


def _smarthost_routes(smarthost: str | None, tls: str) -> tuple[RouteConfig, ...]:
    """The route that relays every domain through `smarthost`, refused if unsafe."""
    if smarthost is None:
        return ()
    if tls not in ("none", "starttls", "implicit"):
        raise UserError(f"--smarthost-tls: expected none, starttls or implicit, got {tls!r}")
    try:
        address = HostPort.parse(smarthost)
    except ValueError as error:
        raise UserError(f"--smarthost: {error}") from None
    if address.port == 0:
        raise UserError("--smarthost: port 0 is not a port to connect to")
    if tls == "none" and not is_loopback(address.host):
        raise UserError(
            "--smarthost-tls none: plaintext is allowed only to a loopback smarthost; "
            'edit the config and add "plaintext_relay" to unsafe_overrides if you must'
        )
    return (RouteConfig(domains=("*",), smarthost=address, tls=tls),)


def _http_listen(http: str | None) -> HostPort | None:
    """The HTTP listener's address, refused unless loopback (it is plain HTTP)."""
    if http is None:
        return None
    try:
        address = HostPort.parse(http)
    except ValueError as error:
        raise UserError(f"--http: {error}") from None
    if not is_loopback(address.host):
        raise UserError(
            "--http: plain HTTP is allowed only on a loopback address (put an HTTPS proxy in "
            'front); edit the config and add "public_http" to unsafe_overrides if you must'
        )
    return address


def _check_given_pair(cert: Path, key: Path) -> None:
    for option, path in (("--cert", cert), ("--key", key)):
        if not path.is_file():
            raise UserError(f"{option}: file not found: {path}")
    mode = key.stat().st_mode & 0o777
    if mode & 0o077:
        raise UserError(
            f"--key: {key} is open to group or others (mode {mode:04o}); run chmod 600 on it"
        )
    certs.check_pair(cert, key)


def _generate_pair(directory: Path, hostname: str) -> tuple[str, str]:
    """Make tls/cert.pem and tls/key.pem; return them as paths relative to `directory`."""
    tls_dir = directory / "tls"
    _make_private_dir(tls_dir)
    cert_path, key_path = tls_dir / "cert.pem", tls_dir / "key.pem"
    for path in (cert_path, key_path):
        if path.exists() or path.is_symlink():
            raise UserError(
                f"{path}: already exists; pass --cert and --key to use it, or remove it"
            )
    certs.generate_self_signed(hostname, cert_path, key_path)
    return "tls/cert.pem", "tls/key.pem"


def _make_private_dir(path: Path, *, parents: bool = False) -> None:
    """Create `path` with mode 0700; an existing directory is left as it is."""
    try:
        path.mkdir(mode=0o700, parents=parents)
    except FileExistsError:
        if not path.is_dir():
            raise UserError(f"{path}: exists and is not a directory") from None
        return
    except OSError as error:
        raise UserError(f"{path}: cannot create: {error.strerror or error}") from None
    # mkdir's mode is masked by the umask; this one is not.
    os.chmod(path, 0o700)
