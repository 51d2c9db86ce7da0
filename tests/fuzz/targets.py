"""The fuzz targets: each takes one libFuzzer input and raises only when an invariant breaks.

Every parser answers bad input in the way its module documents (a Reply, None, AddressError,
MtaStsError, ConfigError, an SMTPResponseException with code -1); that answer is checked and
the input dropped. Any other exception, and every failed assert, is a crash for libFuzzer.
Inputs are read through `engine.Provider`: options from the end, payload from the front.

`use_scratch` must be called before the config target runs: it needs a directory for the
config file and the certificate pair the file names.
"""

from __future__ import annotations

import asyncio
import binascii
import ipaddress
import re
from collections.abc import Callable
from pathlib import Path

from aiosmtplib import SMTPResponseException
from tests.fuzz.engine import Provider
from tests.support.session import HOST, TLS, accept

from sendgate.certs import generate_self_signed
from sendgate.config.load import load_config
from sendgate.config.schema import Config
from sendgate.delivery.mtasts_policy import (
    MAX_AGE_LIMIT,
    MODES,
    MtaStsError,
    parse_policy,
    parse_txt,
)
from sendgate.delivery.outcome import enhanced
from sendgate.delivery.pipeline import MAX_LINE, MAX_LINES, _Replies
from sendgate.delivery.target import MAX_REPLY_TEXT, RemoteReply
from sendgate.errors import ConfigError
from sendgate.smtp import data as data_module
from sendgate.smtp import replies
from sendgate.smtp.address import (
    MAX_DOMAIN,
    MAX_LOCAL_PART,
    Address,
    AddressError,
    is_domain_name,
    is_host_name,
    is_ldh_label,
    parse_domain,
    parse_header_mailboxes,
    parse_header_mailboxes_fully,
    parse_mailbox,
    parse_path,
    split_path,
)
from sendgate.smtp.commands import (
    AUTH_LINE_MAX,
    COMMAND_LINE_MAX,
    MAIL_LINE_MAX,
    MailParameters,
    line_limit,
    parse_bdat,
    parse_line,
    parse_mail_parameters,
    parse_rcpt_parameters,
)
from sendgate.smtp.data import Content, DataReader, check_content, dot_stuff, dot_unstuff
from sendgate.smtp.dsn import NOTIFY_WORDS, RcptParameters, original_recipient
from sendgate.smtp.events import MessageReceived, NeedData
from sendgate.smtp.replies import Reply
from sendgate.smtp.sasl import MECHANISMS, Challenge, SaslExchange
from sendgate.smtp.session import Session, SessionSettings, State
from sendgate.text import one_line, reply_text

Target = Callable[[bytes], None]

_TERMINATOR = b"\r\n.\r\n"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
# An RFC 3463 code in ASCII digits; its class is the basic code's (4 for a 3xx, as
# test_outcome says).
_STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")
_scratch: Path | None = None


def use_scratch(directory: Path) -> None:
    """Where targets that need files (config) keep them; the caller removes it afterwards."""
    global _scratch
    _scratch = directory


def _text(raw: bytes) -> str:
    """Client text as the server sees it (UTF-8), else one character per byte, so no input
    is wasted on a decoding error the callers never pass on."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _no_bare_newline(content: bytes) -> bool:
    crlf = content.count(b"\r\n")
    return content.count(b"\r") == crlf and content.count(b"\n") == crlf


# --- 1. command lines ---

_MAX_SIZES = (0, 1, 1000, 25 * 1024 * 1024, 10**20)
_LINE_REFUSALS = (replies.UNRECOGNIZED, replies.NON_ASCII_COMMAND)
_PARAMETER_REFUSALS = (
    replies.SYNTAX_ERROR,
    replies.MESSAGE_TOO_BIG,
    replies.PARAMETER_NOT_SUPPORTED,
    replies.REQUIRETLS_NEEDS_TLS,
)
_BDAT_ARGUMENT = re.compile(r"[0-9]{1,20}(?: +[Ll][Aa][Ss][Tt])? *")


def fuzz_commands(data: bytes) -> None:
    """parse_line, parse_mail_parameters, parse_rcpt_parameters, parse_bdat and line_limit on
    one command line."""
    fdp = Provider(data)
    max_size = fdp.pick(_MAX_SIZES)
    whole_line = fdp.option(2) == 1  # parameters from the whole line, not the argument
    tls = fdp.option(2) == 1
    line = fdp.rest()
    parsed = parse_line(line)
    if isinstance(parsed, Reply):
        assert parsed in _LINE_REFUSALS, parsed
        argument = _text(line)
    else:
        verb = line.partition(b" ")[0]
        assert parsed.verb == verb.decode("ascii").upper()
        assert 1 <= len(parsed.verb) <= 16
        assert parsed.verb.isalpha()
        assert parsed.verb.isascii()
        assert not _CONTROL.search(parsed.argument)
        assert parsed.argument == parsed.argument.strip(" ")
        assert parsed.argument.encode() in line
        assert line_limit(parsed.verb) in (COMMAND_LINE_MAX, MAIL_LINE_MAX, AUTH_LINE_MAX)
        argument = _text(line) if whole_line else parsed.argument
    params = parse_mail_parameters(argument, max_size, tls=tls)
    if isinstance(params, Reply):
        assert params in _PARAMETER_REFUSALS, params
        if params is replies.REQUIRETLS_NEEDS_TLS:
            assert not tls
            assert "REQUIRETLS" in argument.upper()
    else:
        assert isinstance(params, MailParameters)
        assert params.size is None or 0 <= params.size <= max_size
        assert params.body in ("7BIT", "8BITMIME")
        assert params.ret in (None, "FULL", "HDRS")
        assert params.envid is None or _PRINTABLE_ASCII.fullmatch(params.envid)
        assert tls or not params.requiretls
        if not _CONTROL.search(argument):
            # RFC 5321 esmtp-param: ASCII keywords and values, separated by spaces.
            assert _PRINTABLE_ASCII.fullmatch(argument), argument
    rcpt = parse_rcpt_parameters(argument)
    if isinstance(rcpt, Reply):
        assert rcpt in (replies.SYNTAX_ERROR, replies.PARAMETER_NOT_SUPPORTED), rcpt
    else:
        assert isinstance(rcpt, RcptParameters)
        notify = rcpt.notify
        assert (
            notify is None
            or notify == ("NEVER",)
            or list(notify) == sorted(notify, key=NOTIFY_WORDS.index)
        )
        assert rcpt.orcpt is None or original_recipient(rcpt.orcpt) is not None
    chunk = parse_bdat(argument)
    if chunk is not None:
        size, _ = chunk
        assert 0 <= size < 10**20
        assert _BDAT_ARGUMENT.fullmatch(argument), argument


# --- 2. addresses and host names ---


def _check_address(address: Address, smtputf8: bool) -> None:
    assert address.local, address
    assert smtputf8 or address.is_ascii, address
    assert len(address.local.encode()) <= MAX_LOCAL_PART
    assert len(address.domain.encode()) <= MAX_DOMAIN
    # Canonical: what we print parses back to the same address, and the domain is stable.
    assert parse_mailbox(str(address), smtputf8=smtputf8) == address, address
    assert parse_domain(address.domain, smtputf8=smtputf8) == address.domain, address


def _fuzz_path(text: str, smtputf8: bool, allow_null: bool, split: bool) -> None:
    if split:
        try:
            path, rest = split_path(text)
        except AddressError:
            return
        assert path.startswith("<")
        assert path.endswith(">")
        assert text.startswith(path)
        assert rest == text[len(path) :].strip(" ")
        assert not rest or text[len(path)] == " "
    else:
        path = text
    try:
        address = parse_path(path, smtputf8=smtputf8, allow_null=allow_null)
    except AddressError:
        return
    if address is None:
        assert allow_null
        assert not path[1:-1]
    else:
        _check_address(address, smtputf8)


def _fuzz_host_name(name: str, underscore: bool) -> None:
    label = is_ldh_label(name, underscore=underscore)
    domain = is_domain_name(name, underscore=underscore)
    host = is_host_name(name, underscore=underscore)
    if label:
        assert name.isascii()
        assert 1 <= len(name) <= 63
        assert "." not in name
        assert domain
    if domain:
        assert name.isascii()
        assert len(name) <= 253
        assert all(1 <= len(part) <= 63 for part in name.split("."))
        assert is_domain_name(name, underscore=True)
        if not underscore:
            assert parse_domain(name, smtputf8=False) == name.lower()
    if host:
        assert domain
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            pass
        else:
            raise AssertionError(f"host name {name!r} reads as an IPv4 address")


def _outcome(value: str, smtputf8: bool, full: bool) -> list[Address] | None:
    parse = parse_header_mailboxes_fully if full else parse_header_mailboxes
    try:
        return parse("From", value, smtputf8=smtputf8)
    except AddressError:
        return None


def _fuzz_header(value: str, smtputf8: bool) -> None:
    value = value.strip()
    fast = _outcome(value, smtputf8, full=False)
    assert fast == _outcome(value, smtputf8, full=True), value
    for address in fast or ():
        _check_address(address, smtputf8)


def fuzz_address(data: bytes) -> None:
    """split_path + parse_path (as MAIL and RCPT use them), parse_path alone, host names."""
    fdp = Provider(data)
    flags = fdp.option(256)
    smtputf8, allow_null, underscore = bool(flags & 1), bool(flags & 2), bool(flags & 4)
    mode = (flags >> 3) % 3
    text = _text(fdp.rest())
    if mode == 2:
        _fuzz_host_name(text, underscore)
    else:
        _fuzz_path(text, smtputf8, allow_null, split=mode == 0)


def fuzz_header(data: bytes) -> None:
    """From:/Sender: field bodies: the plain-value shortcut against the stdlib's full parse.

    Apart from `address` because the stdlib parser is slow: it would take most of the runs.
    """
    fdp = Provider(data)
    smtputf8 = fdp.option(2) == 1
    _fuzz_header(_text(fdp.rest()), smtputf8)


# --- 3. SASL ---

_PROMPTS = ("", "VXNlcm5hbWU6", "UGFzc3dvcmQ6")
_SASL_REFUSALS = (replies.AUTH_CANCELLED, replies.BAD_BASE64)


def _base64(line: str) -> bytes:
    return b"" if line == "=" else binascii.a2b_base64(line.encode("ascii"), strict_mode=True)


def fuzz_sasl(data: bytes) -> None:
    """A SaslExchange fed an optional initial response and continuation lines."""
    fdp = Provider(data)
    mechanism = fdp.pick((*MECHANISMS, "CRAM-MD5", ""))
    with_initial = fdp.option(2) == 1
    lines = [raw.decode("latin-1") for raw in fdp.rest().split(b"\r\n")[:4]]
    try:
        exchange = SaslExchange(mechanism)
    except ValueError:
        assert mechanism not in MECHANISMS
        return
    initial = lines.pop(0) if with_initial and lines else None
    given = [] if initial is None else [initial]
    step = exchange.start(initial)
    while isinstance(step, Challenge):
        assert step.text in _PROMPTS, step
        if not lines:
            return
        given.append(lines.pop(0))
        step = exchange.respond(given[-1])
    assert len(given) <= 2
    if isinstance(step, Reply):
        assert step in _SASL_REFUSALS, step
        return
    assert step.mechanism == mechanism
    assert step.username
    assert step.password
    assert "\0" not in step.username + step.password + step.authzid
    if mechanism == "PLAIN":
        # The credentials are exactly the last response: authzid NUL username NUL password.
        expected = f"{step.authzid}\0{step.username}\0{step.password}".encode()
        assert _base64(given[-1]) == expected
    else:
        assert step.authzid == ""
        assert len(given) == 2
        assert [_base64(line) for line in given] == [
            step.username.encode(),
            step.password.encode(),
        ]


# --- 4. DATA and BDAT content ---

_CONTENT_SIZES = (0, 1, 16, 1000, 25 * 1024 * 1024)


def _expected_content(stream: bytes, max_size: int) -> tuple[int, Content] | None:
    """What DataReader must answer for `stream` however it is cut: (octets used, content)."""
    window = b"\r\n" + stream
    end = window.find(_TERMINATOR)
    if end < 0:
        return None
    raw = window[2 : end + 2]
    if len(raw) > max_size + data_module._STUFFING_SLACK:
        return end + 3, Content(None, len(raw), data_module.ContentProblem.TOO_BIG)
    content = dot_unstuff(raw)
    return end + 3, check_content(content, len(content), max_size)


def _check_checked(content: Content, max_size: int) -> None:
    if content.data is None:
        assert content.problem is not None
        return
    assert content.problem is None
    assert content.size == len(content.data) <= max_size
    assert _no_bare_newline(content.data)
    assert not content.data or content.data.endswith(b"\r\n")
    assert all(len(line) <= 998 for line in content.data.split(b"\r\n"))


_SPILL_AT = (0, 1, 64, 4096)


class _Sink:
    """An in-memory BodySink."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.discarded = False

    def write(self, data: bytes) -> None:
        assert not self.discarded
        self.data += data

    def discard(self) -> None:
        self.discarded = True


def _check_spilled(chunks: list[bytes], expected: Content, max_size: int, spill_at: int) -> None:
    """The same reads through a DataReader that spills past `spill_at`: the same verdict, and
    the same bytes (header section + sink) for an accepted message."""
    sinks: list[_Sink] = []

    def open_sink() -> _Sink:
        sinks.append(_Sink())
        return sinks[-1]

    reader = DataReader(max_size, open_sink, spill_at=spill_at)
    for chunk in chunks:
        _, content = reader.feed(chunk)
        if content is not None:
            break
    assert content is not None
    assert len(sinks) <= 1
    if expected.data is None:
        assert content.data is None
        assert content.problem is not None
        assert all(sink.discarded for sink in sinks)
        return
    assert content.problem is None
    assert content.data is not None
    if content.body is None:
        assert content.data == expected.data
        assert all(sink.discarded for sink in sinks)
    else:
        assert sinks == [content.body]
        assert not sinks[0].discarded
        assert content.data + bytes(sinks[0].data) == expected.data
    assert content.size == expected.size


def fuzz_data(data: bytes) -> None:
    """DataReader across any chunking against a one-shot oracle; check_content; dot-stuffing."""
    fdp = Provider(data)
    max_size = fdp.pick(_CONTENT_SIZES)
    chunks = list(fdp.chunks(64))
    stream = b"".join(chunks)
    reader = DataReader(max_size)
    used_total = 0
    got: tuple[int, Content] | None = None
    for chunk in chunks:
        used, content = reader.feed(chunk)
        assert 0 <= used <= len(chunk)
        used_total += used
        if content is not None:
            got = used_total, content
            break
        assert used == len(chunk)
    assert got == _expected_content(stream, max_size), (got, stream)
    if got is not None:
        _check_checked(got[1], max_size)
        _check_spilled(chunks, got[1], max_size, fdp.pick(_SPILL_AT))
    _check_checked(check_content(stream, len(stream), max_size), max_size)
    # Transparency (RFC 5321 4.5.2): stuffed content never holds the terminator and reads back.
    stuffed = dot_stuff(stream)
    assert dot_unstuff(stuffed) == stream
    assert _TERMINATOR not in b"\r\n" + stuffed
    body = stream if not stream or stream.endswith(b"\r\n") else stream + b"\r\n"
    used, content = DataReader(max_size).feed(dot_stuff(body) + b".\r\n")
    assert used == len(dot_stuff(body)) + 3
    assert content == check_content(body, len(body), max_size)


# --- 5. the whole Session ---

SESSION_SIZES = (64, 1000, 100_000, 25 * 1024 * 1024)
RECIPIENT_LIMITS = (1, 2, 100)
ERROR_LIMITS = (1, 3, 10)
_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -])([^\r\n]*)")
_ENHANCED = re.compile(rb"([245])\.[0-9]{1,3}\.[0-9]{1,3}(?: |$)")
_BDAT_LAST = re.compile(rb"BDAT +[0-9]+ +LAST *\r\n", re.IGNORECASE)


def session_settings(flags: int, limits: int) -> tuple[SessionSettings, bool]:
    """The Session's settings for the option bytes, and whether it starts in TLS (port 465)."""
    settings = SessionSettings(
        HOST,
        max_message_size=SESSION_SIZES[limits % 4],
        max_recipients=RECIPIENT_LIMITS[limits // 4 % 3],
        max_errors=ERROR_LIMITS[limits // 12 % 3],
        tls_available=not flags & 8,
        auth_required=not flags & 4,
        auth_without_tls=bool(flags & 2),
    )
    return settings, bool(flags & 1)


class _Client:
    """Feeds a Session, answers as tests/support/session.accept does, and checks what it sees."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.received = bytearray()
        self.output = bytearray()
        self.messages = 0
        self.closed_at: int | None = None

    def feed(self, chunk: bytes) -> None:
        self.received += chunk
        self.session.receive_data(chunk)
        self._pump()

    def _pump(self) -> None:
        session = self.session
        while True:
            event = session.next_event()
            if isinstance(event, NeedData):
                # output_full: input waits behind the replies; TLS_WAIT: the shell's handshake.
                again = session.output_full or session.state is State.TLS_WAIT
                self._drain()
                if session.state is State.TLS_WAIT:
                    session.tls_established(TLS)
                if not again:
                    return
                continue
            self._drain()
            if isinstance(event, MessageReceived):
                self._check_message(event)
            session.answer(accept(event))

    def _drain(self) -> None:
        out = self.session.data_to_send()
        if self.closed_at is not None:
            assert not out, f"output after close: {out!r}"
        self.output += out
        assert not self.output or self.output.endswith(b"\r\n"), bytes(self.output[-200:])
        for refusal in self.session.refusals():
            assert refusal.code >= 400, refusal
            assert refusal.enhanced, refusal
        if self.session.closed:
            self.closed_at = len(self.output)

    def _check_message(self, event: MessageReceived) -> None:
        self.messages += 1
        received = bytes(self.received)
        data_ends = received.count(_TERMINATOR) if self._replied(b"354") else 0
        assert self.messages <= data_ends + len(_BDAT_LAST.findall(received)), received
        content = event.content
        assert _no_bare_newline(content), content
        assert not content or content.endswith(b"\r\n")
        assert len(content) <= self.session.settings.max_message_size
        assert all(len(line) <= 998 for line in content.split(b"\r\n"))
        assert event.recipients

    def _replied(self, code: bytes) -> bool:
        return self.output.startswith(code) or b"\r\n" + code in self.output

    def check_output(self) -> None:
        lines = bytes(self.output).split(b"\r\n")
        assert lines[-1] == b""
        continued: bytes | None = None
        for line in lines[:-1]:
            match = _REPLY_LINE.fullmatch(line)
            assert match is not None, line
            code, separator, text = match.groups()
            assert continued is None or code == continued, line
            continued = code if separator == b"-" else None
            if code[0] in b"45":
                status = _ENHANCED.match(text)
                assert status is not None, line
                assert status[1] == code[:1], line
        assert continued is None


def fuzz_session(data: bytes) -> None:
    """A Session fed an arbitrary byte stream in arbitrary reads, every decision accepted."""
    fdp = Provider(data)
    flags = fdp.option(256)
    settings, tls = session_settings(flags, fdp.option(256))
    session = Session(settings, TLS if tls else None)
    client = _Client(session)
    client._drain()
    for chunk in fdp.chunks(256):
        client.feed(chunk)
    if flags & 16:
        client.feed(b"")
    client.check_output()


# --- 6. replies of the next hop ---


def _read_replies(chunks: list[bytes]) -> tuple[list[tuple[int, str]], Exception | None]:
    parser = _Replies(asyncio.Protocol())
    for chunk in chunks:
        parser.data_received(chunk)
    if parser.error is not None:
        assert isinstance(parser.error, SMTPResponseException)
        assert parser.error.code == -1
    return list(parser.replies), parser.error


def fuzz_reply(data: bytes) -> None:
    """Outbound reply parsing (pipeline._Replies), then what delivery keeps of each reply."""
    chunks = list(Provider(data).chunks(256))
    found, error = _read_replies(chunks)
    whole, whole_error = _read_replies([b"".join(chunks)] if chunks else [])
    # The peer's TCP segmentation must not change what we read.
    assert found == whole, (found, whole)
    assert (error is None) == (whole_error is None), (error, whole_error)
    for code, text in found:
        assert 200 <= code <= 599
        lines = text.split("\n")
        assert len(lines) <= MAX_LINES
        assert all(len(line) <= MAX_LINE for line in lines)
        reply = RemoteReply(code, reply_text(text, MAX_REPLY_TEXT))
        status = enhanced(reply)
        assert _STATUS.fullmatch(status), (status, text)
        assert status[0] == (str(code)[0] if code // 100 != 3 else "4"), (status, text)
        logged = one_line(str(reply))
        assert logged.isprintable()
        assert len(logged) <= 1000


# --- 7. MTA-STS ---

_TXT_ID = re.compile(rb"[A-Za-z0-9]{1,32}")


def fuzz_mtasts(data: bytes) -> None:
    """parse_txt on TXT records, parse_policy on a policy body, and what a policy allows."""
    fdp = Provider(data)
    txt = fdp.option(2) == 1
    body = fdp.rest()
    if txt:
        records = body.split(b"\n")
        policy_id = parse_txt(records)
        if policy_id is not None:
            assert _TXT_ID.fullmatch(policy_id.encode())
            # RFC 8461 3.1: only records of "v=STSv1" and then a separator or nothing count.
            sts = [r for r in records if r[:7] == b"v=STSv1" and r[7:8] in (b"", b";", b" ", b"\t")]
            assert len(sts) == 1
            assert b"id=" + policy_id.encode() in sts[0]
        return
    try:
        policy = parse_policy(body, policy_id="fuzz", fetched_at=0.0)
    except MtaStsError as error:
        message = str(error)
        assert message.isprintable(), message
        assert message, body
        return
    assert policy.mode in MODES
    assert policy.policy_id == "fuzz"
    assert 0 <= policy.max_age <= MAX_AGE_LIMIT
    assert policy.mx or policy.mode == "none"
    for pattern in policy.mx:
        # Patterns are the policy's own (ASCII) names, lower-cased: RFC 8461 3.2 and 4.1.
        assert pattern.encode() in body.lower(), pattern
        name = pattern.removeprefix("*.")
        assert is_domain_name(name)
        host = f"mx.{name}" if pattern.startswith("*.") else name
        assert policy.allows(host)
        assert policy.allows(host.upper() + ".")


# --- 8. the config loader ---


def _config_file() -> Path:
    if _scratch is None:
        raise RuntimeError("use_scratch() first: the config target needs a directory")
    directory = _scratch / "config"
    if not (directory / "key.pem").exists():
        directory.mkdir(parents=True, exist_ok=True)
        generate_self_signed("mail.example.com", directory / "cert.pem", directory / "key.pem")
    return directory / "sendgate.toml"


def fuzz_config(data: bytes) -> None:
    """load_config on arbitrary TOML: a Config, or one ConfigError line."""
    path = _config_file()
    path.write_bytes(data)
    try:
        config = load_config(path)
    except ConfigError as error:
        message = str(error)
        assert message.splitlines() == [message], message
        return
    assert isinstance(config, Config)


TARGETS: dict[str, Target] = {
    "commands": fuzz_commands,
    "address": fuzz_address,
    "header": fuzz_header,
    "sasl": fuzz_sasl,
    "data": fuzz_data,
    "session": fuzz_session,
    "reply": fuzz_reply,
    "mtasts": fuzz_mtasts,
    "config": fuzz_config,
}
