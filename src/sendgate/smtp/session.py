"""The SMTP server protocol as a pure state machine: bytes in, decision events out, replies back.

Security: every byte given to `receive_data` is untrusted. The Session answers syntax and
sequence errors itself, refuses bare CR/LF in commands and in message content, caps line
lengths, message size and recipient count, closes after too many errors, and keeps no byte that
arrived after an accepted STARTTLS (RFC 3207: pipelined plaintext is discarded, never executed).
It touches no socket, file or clock; the I/O shell feeds it and sends what it returns.

Use (h11-style): `receive_data(bytes)` (b"" for EOF); call `next_event()` until it returns
NEED_DATA, answering every event with `answer(reply)` before the next call; send
`data_to_send()`; close the transport once `closed` is true. NEED_DATA with `output_full` set
means input waits behind unsent replies: send them, then call `next_event()` again. After EOF,
commands already received are still answered; `close()` ends the session at once. While an
event is pending the Session reads nothing more, so the shell should pause reading until it
answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto
from functools import lru_cache

from sendgate.smtp import replies
from sendgate.smtp.address import Address, AddressError, parse_path, split_path
from sendgate.smtp.commands import (
    AUTH_LINE_MAX,
    LINE_BUFFER_MAX,
    Command,
    MailParameters,
    line_limit,
    parse_bdat,
    parse_line,
    parse_mail_parameters,
    parse_rcpt_parameters,
)
from sendgate.smtp.data import Content, ContentProblem, DataReader, check_content
from sendgate.smtp.dsn import RcptParameters
from sendgate.smtp.events import (
    NEED_DATA,
    AuthAttempt,
    Event,
    MailFrom,
    MessageReceived,
    NeedData,
    RcptTo,
    StartTls,
    TlsInfo,
)
from sendgate.smtp.replies import Reply
from sendgate.smtp.sasl import MECHANISMS, Challenge, Credentials, SaslExchange
from sendgate.smtp.spill import ContentBuffer, SinkFactory

# Message content counts as one step of progress per this many octets, so that the shell's
# command timeout also bounds a DATA or BDAT body trickled in (a floor of about 220 octets/s
# with the default 300 s).
CONTENT_STEP = 64 * 1024
# The Session stops reading input while this many reply octets wait in `data_to_send`: a client
# that pipelines commands and never reads the replies cannot make them pile up in memory.
OUTPUT_MAX = 64 * 1024


class ProtocolUsageError(RuntimeError):
    """The application misused the Session API (a bug in sendgate, never caused by a client)."""


class State(Enum):
    INIT = auto()  # no EHLO/HELO yet (also right after TLS starts)
    READY = auto()  # greeted, no transaction
    MAIL = auto()  # MAIL accepted, no recipient yet
    RCPT = auto()  # at least one recipient accepted
    BDAT = auto()  # between BDAT chunks of one message
    DATA = auto()  # reading DATA content
    AUTH = auto()  # inside a SASL exchange
    TLS_WAIT = auto()  # STARTTLS accepted, the shell is upgrading the transport
    CLOSED = auto()


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """What a Session needs to know about the server; plain values, no I/O."""

    hostname: str
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 100
    max_errors: int = 10
    tls_available: bool = True
    auth_required: bool = True
    auth_without_tls: bool = False
    greeting: str = "ESMTP ready"  # the banner's text after the host name


@lru_cache(maxsize=64)
def _ehlo_lines(settings: SessionSettings, tls: bool) -> tuple[str, ...]:
    lines = [
        "PIPELINING",
        f"SIZE {settings.max_message_size}",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "DSN",
    ]
    if settings.tls_available and not tls:
        lines.append("STARTTLS")
    if tls:
        lines.append("REQUIRETLS")  # RFC 8689 3: only over TLS
    if tls or settings.auth_without_tls:
        lines.append("AUTH " + " ".join(MECHANISMS))
    return tuple(lines)


_ANY = frozenset(State) - {State.DATA, State.AUTH, State.TLS_WAIT, State.CLOSED}
_GREETED = _ANY - {State.INIT}
# The transition table: a command outside its states gets the matching sequence error below.
_ALLOWED: dict[str, frozenset[State]] = {
    "EHLO": _ANY,
    "HELO": _ANY,
    "STARTTLS": frozenset({State.READY}),
    "AUTH": frozenset({State.READY}),
    "MAIL": frozenset({State.READY}),
    "RCPT": frozenset({State.MAIL, State.RCPT}),
    "DATA": frozenset({State.RCPT}),
    "BDAT": frozenset({State.RCPT, State.BDAT}),
    "RSET": _ANY,
    "NOOP": _ANY,
    "QUIT": _ANY,
    "HELP": _ANY,
    "VRFY": _ANY,
}
_SEQUENCE_ERRORS: dict[tuple[str, State], Reply] = {
    **{(verb, State.INIT): replies.NEED_EHLO for verb in _ALLOWED},
    **{("MAIL", s): replies.NESTED_MAIL for s in (State.MAIL, State.RCPT, State.BDAT)},
    ("RCPT", State.READY): replies.NEED_MAIL,
    ("DATA", State.READY): replies.NEED_MAIL,
    ("DATA", State.MAIL): replies.NEED_RCPT,
    ("DATA", State.BDAT): replies.DATA_AND_BDAT,
    ("BDAT", State.READY): replies.NEED_MAIL,
    ("BDAT", State.MAIL): replies.NEED_RCPT,
}


_NO_RCPT_PARAMETERS = RcptParameters()


@dataclass(slots=True)
class _Transaction:
    params: MailParameters
    sender: Address | None
    recipients: list[Address]
    rcpt_params: list[RcptParameters]


# How each content problem is answered (one table, not one built per refusal).
_CONTENT_REFUSALS: dict[ContentProblem, Reply] = {
    ContentProblem.TOO_BIG: replies.MESSAGE_TOO_BIG,
    ContentProblem.BARE_NEWLINE: replies.BARE_NEWLINE_IN_DATA,
    ContentProblem.LONG_LINE: replies.TEXT_LINE_TOO_LONG,
    ContentProblem.NO_FINAL_CRLF: replies.NO_FINAL_CRLF,
    ContentProblem.NO_MEMORY: replies.STORAGE_FULL,
    ContentProblem.HEADER_TOO_BIG: replies.HEADER_TOO_BIG,
    ContentProblem.NO_SPACE: replies.STORAGE_FULL,
    ContentProblem.WRITE_FAILED: replies.LOCAL_ERROR,
}


class Session:
    """One SMTP server session (see the module docstring for the calling convention)."""

    def __init__(
        self,
        settings: SessionSettings,
        tls: TlsInfo | None = None,
        open_sink: SinkFactory | None = None,
    ) -> None:
        """`open_sink`: where large message bodies go as they arrive (`sendgate.smtp.spill`);
        without it every message is held in memory up to the size limit."""
        self.settings = settings
        self.tls = tls
        self._open_sink = open_sink
        self.authenticated: str | None = None
        self.client_name: str | None = None
        self.esmtp = False
        self.errors = 0
        self.discarded_plaintext = 0
        self._state = State.INIT
        self._eof = False
        self._buf = bytearray()
        self._out = bytearray(f"220 {settings.hostname} {settings.greeting}\r\n".encode())
        self._pending: Event | None = None
        self._refusals: list[Reply] = []
        self._txn: _Transaction | None = None
        self._sasl: SaslExchange | None = None
        self._data: DataReader | None = None
        self._discarding_line = False
        self._in_chunk = False
        self._chunk_left = 0
        self._chunk_reply: Reply | None = None  # set when the chunk is consumed only to be refused
        self._chunk_last = False
        self._chunks: ContentBuffer | None = None  # the BDAT chunks' content
        self._chunks_size = 0
        self._dropped = False  # the shell dropped this message's content: refuse it with 452
        self._received = 0  # octets of the message handed over in a pending MessageReceived
        self._lines = 0  # complete command lines consumed (for `progress`)
        self._content = 0  # message content octets consumed (for `progress`)

    # --- public API ---

    @property
    def state(self) -> State:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is State.CLOSED

    @property
    def progress(self) -> int:
        """Steps the client completed: command lines, and each CONTENT_STEP octets of content.

        The shell measures its command timeout from the last change, so a client that trickles
        a byte at a time without ending a line (or a body far below a sane rate) is cut off.
        """
        return self._lines + self._content // CONTENT_STEP

    @property
    def content_held(self) -> int:
        """Octets of the current message held in memory (until its MessageReceived is answered).

        The shell charges them to its memory budget; see `drop_content`.
        """
        data = self._data.held if self._data is not None else 0
        chunks = self._chunks.held if self._chunks is not None else 0
        return data + chunks + self._received

    def drop_content(self) -> None:
        """Let go of the message being received: the memory budget is spent.

        The rest of its content is read and not kept, and its end is answered with 452 4.3.1
        (as is the BDAT chunk under way, after which the transaction is reset). A message
        already handed over in MessageReceived is not affected.
        """
        if self._data is not None:
            self._data.drop()
        elif self._state is State.BDAT or self._in_chunk:
            if self._chunks is not None:
                self._chunks.drop()
            self._dropped = True
            if self._in_chunk and self._chunk_reply is None:
                self._chunk_reply = replies.STORAGE_FULL

    @property
    def output_full(self) -> bool:
        """True when input waits until `data_to_send` is taken (see OUTPUT_MAX)."""
        return len(self._out) >= OUTPUT_MAX

    @property
    def busy(self) -> bool:
        """True while a mail transaction or a decision is under way (graceful shutdown waits)."""
        return self._pending is not None or self._state in (
            State.MAIL,
            State.RCPT,
            State.BDAT,
            State.DATA,
        )

    def receive_data(self, data: bytes) -> None:
        """Feed bytes; b"" is the client's EOF: what is buffered is still answered, then closed."""
        if not data:
            self._eof = True
            if self._state is State.TLS_WAIT:
                self._state = State.CLOSED
        elif self._state is State.TLS_WAIT:
            self.discarded_plaintext += len(data)
        elif self._state is not State.CLOSED:
            self._buf += data

    def refusals(self) -> list[Reply]:
        """The 4xx/5xx replies the Session gave on its own since the last call (for the log)."""
        out, self._refusals = self._refusals, []
        return out

    def close(self) -> None:
        """End the session now (timeouts, shutdown); nothing more is read or answered."""
        self._state = State.CLOSED
        self._discard_content()

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def tls_established(self, info: TlsInfo) -> None:
        """The transport now speaks TLS: forget everything, as RFC 3207 section 4.2 requires."""
        if self._state is not State.TLS_WAIT:
            raise ProtocolUsageError("tls_established without an accepted STARTTLS")
        self.tls = info
        self.authenticated = None
        self.client_name = None
        self.esmtp = False
        self._txn = None
        self._state = State.INIT

    def next_event(self) -> Event | NeedData:
        if self._pending is not None:
            raise ProtocolUsageError("answer the pending event first")
        while True:
            if self._state in (State.CLOSED, State.TLS_WAIT) or len(self._out) >= OUTPUT_MAX:
                return NEED_DATA
            if self._in_chunk:
                if not self._read_chunk():
                    return self._starved()
                event = self._end_of_chunk()
            elif self._state is State.DATA:
                content = self._read_data()
                if content is None:
                    return self._starved()
                event = self._end_of_message(content)
            else:
                line = self._next_line()
                if line is None:
                    return self._starved()
                event = self._handle_line(line)
            if isinstance(event, (StartTls, AuthAttempt, MailFrom, RcptTo, MessageReceived)):
                self._pending = event
                return event

    def _starved(self) -> NeedData:
        if self._eof:  # after EOF no more bytes will come: an incomplete command is dropped
            self._state = State.CLOSED
            self._discard_content()
        return NEED_DATA

    def answer(self, reply: Reply) -> None:
        event = self._pending
        if event is None:
            raise ProtocolUsageError("no event to answer")
        self._pending = None
        self._received = 0
        if self._state is State.CLOSED:  # EOF arrived while the application decided
            return
        ok = reply.is_positive
        if isinstance(event, StartTls):
            if ok:
                self.discarded_plaintext += len(self._buf)
                self._buf.clear()
                # After the client's EOF no handshake can follow: close once the 220 is out.
                self._state = State.CLOSED if self._eof else State.TLS_WAIT
        elif isinstance(event, AuthAttempt):
            self._state = State.READY
            if ok:
                self.authenticated = event.username
        elif isinstance(event, MailFrom):
            if ok:
                params = MailParameters(
                    event.size,
                    event.body,
                    event.smtputf8,
                    event.ret,
                    event.envid,
                    event.requiretls,
                )
                self._txn = _Transaction(params, event.sender, [], [])
                self._state = State.MAIL
        elif isinstance(event, RcptTo):
            if ok and self._txn is not None:
                self._txn.recipients.append(event.recipient)
                self._txn.rcpt_params.append(event.params)
                self._state = State.RCPT
        else:
            self._reset_transaction()
        self._send(reply, own=False)

    # --- replies and errors ---

    def _send(self, reply: Reply, *, own: bool = True) -> None:
        self._out += reply.encode()
        if own and reply.code >= 400:
            self._refusals.append(reply)
        if reply.closes:
            self._state = State.CLOSED
        elif reply.code >= 500:
            self.errors += 1
            if self.errors >= self.settings.max_errors:
                self._out += replies.TOO_MANY_ERRORS.encode()
                self._refusals.append(replies.TOO_MANY_ERRORS)
                self._state = State.CLOSED
        if self._state is State.CLOSED:
            self._discard_content()

    def _discard_content(self) -> None:
        """Let go of a message being received (and of its spilled body, if any)."""
        if self._data is not None:
            self._data.discard()
        if self._chunks is not None:
            self._chunks.discard()

    def _reset_transaction(self) -> None:
        self._discard_content()
        self._txn = None
        self._data = None
        self._chunks = None
        self._chunks_size = 0
        self._dropped = False
        if self._state not in (State.INIT, State.CLOSED):
            self._state = State.READY

    # --- input framing ---

    def _next_line(self) -> bytes | Reply | None:
        buf = self._buf
        end = buf.find(b"\n")
        if self._discarding_line:
            if end < 0:
                buf.clear()
                return None
            del buf[: end + 1]
            self._discarding_line = False
            return (
                replies.AUTH_LINE_TOO_LONG if self._state is State.AUTH else replies.LINE_TOO_LONG
            )
        if end < 0:
            if len(buf) > LINE_BUFFER_MAX:
                buf.clear()
                self._discarding_line = True
            return None
        if end > LINE_BUFFER_MAX:
            # Too long however it was read: answer as if it had been dropped in pieces.
            del buf[: end + 1]
            return (
                replies.AUTH_LINE_TOO_LONG if self._state is State.AUTH else replies.LINE_TOO_LONG
            )
        line = bytes(buf[: end + 1])
        del buf[: end + 1]
        return line

    def _handle_line(self, line: bytes | Reply) -> Event | None:
        self._lines += 1
        if isinstance(line, Reply):
            self._abort_sasl()
            self._send(line)
            return None
        if len(line) < 2 or line[-2] != 0x0D or b"\r" in line[:-2]:
            self._abort_sasl()
            self._send(replies.BARE_NEWLINE)
            return None
        if self._state is State.AUTH:
            return self._sasl_response(line)
        parsed = parse_line(line[:-2])
        if isinstance(parsed, Reply):
            self._send(parsed)
            return None
        if len(line) > line_limit(parsed.verb):
            self._send(replies.LINE_TOO_LONG)
            return None
        return self._dispatch(parsed)

    def _read_data(self) -> Content | None:
        assert self._data is not None
        if not self._buf:
            return None
        used, content = self._data.feed(bytes(self._buf))
        del self._buf[:used]
        self._content += used
        return content

    def _read_chunk(self) -> bool:
        take = min(self._chunk_left, len(self._buf))
        if take:
            if self._chunk_reply is None and self._chunks_size <= self.settings.max_message_size:
                if self._chunks is None:
                    self._chunks = ContentBuffer(
                        self.settings.max_message_size, stuffed=False, open_sink=self._open_sink
                    )
                self._chunks.add(bytes(self._buf[:take]))
            del self._buf[:take]
            self._chunk_left -= take
            self._content += take
        return self._chunk_left == 0

    def _end_of_chunk(self) -> Event | None:
        refusal, last = self._chunk_reply, self._chunk_last
        self._in_chunk = False
        self._chunk_reply = None
        if refusal is not None:
            if self._dropped:  # the chunk was read only to be refused for want of memory
                self._reset_transaction()
            self._send(refusal)
            return None
        if self._chunks_size > self.settings.max_message_size:
            self._reset_transaction()
            self._send(replies.MESSAGE_TOO_BIG)
            return None
        if not last:
            self._state = State.BDAT
            self._send(replies.CHUNK_OK.with_text(f"{self._chunks_size} octets received"))
            return None
        chunks = self._chunks
        if chunks is not None and chunks.spilled:
            return self._end_of_message(chunks.finish_spilled())
        data = chunks.raw() if chunks is not None else b""
        return self._end_of_message(check_content(data, len(data), self.settings.max_message_size))

    def _end_of_message(self, content: Content) -> Event | None:
        txn = self._txn
        assert txn is not None
        if content.data is None:
            self._reset_transaction()
            self._send(_CONTENT_REFUSALS[content.problem or ContentProblem.TOO_BIG])
            return None
        self._state = State.RCPT  # until answered: the transaction is still open
        self._received = len(content.data)  # in memory: the header section of a spilled one
        params = txn.params
        given = any(rcpt != _NO_RCPT_PARAMETERS for rcpt in txn.rcpt_params)
        return MessageReceived(
            txn.sender,
            tuple(txn.recipients),
            params.body,
            params.smtputf8,
            content.data,
            content.body,
            content.size - len(content.data) if content.body is not None else 0,
            params.ret,
            params.envid,
            params.requiretls,
            tuple(txn.rcpt_params) if given else (),
        )

    # --- commands ---

    def _dispatch(self, cmd: Command) -> Event | None:
        verb = cmd.verb
        allowed = _ALLOWED.get(verb)
        if allowed is None:
            self._send(replies.NOT_IMPLEMENTED if verb == "EXPN" else replies.UNRECOGNIZED)
            return None
        if verb == "STARTTLS" and self.tls is not None:
            self._send(replies.ALREADY_TLS)
            return None
        if self._state not in allowed:
            refusal = _SEQUENCE_ERRORS.get((verb, self._state), replies.BAD_SEQUENCE)
            if verb == "BDAT":
                self._bdat(cmd.argument, refusal)
            else:
                self._send(refusal)
            return None
        result: Event | None = _COMMANDS[verb](self, cmd.argument)
        return result

    def _cmd_ehlo(self, argument: str) -> None:
        self._greet(argument, esmtp=True)

    def _cmd_helo(self, argument: str) -> None:
        self._greet(argument, esmtp=False)

    def _greet(self, argument: str, *, esmtp: bool) -> None:
        if not argument or " " in argument or len(argument) > 255:
            self._send(replies.SYNTAX_ERROR)
            return
        self.client_name = argument
        self.esmtp = esmtp
        self._reset_transaction()
        self._state = State.READY
        hostname = self.settings.hostname
        if esmtp:
            lines = _ehlo_lines(self.settings, self.tls is not None)
            self._out += replies.ehlo_reply([hostname, *lines])
        else:
            self._out += f"250 {hostname}\r\n".encode()

    def _cmd_starttls(self, argument: str) -> StartTls | None:
        if argument:
            self._send(replies.SYNTAX_ERROR)
            return None
        if not self.settings.tls_available:
            self._send(replies.TLS_NOT_AVAILABLE)
            return None
        return StartTls()

    def _cmd_auth(self, argument: str) -> AuthAttempt | None:
        if self.authenticated is not None:
            self._send(replies.ALREADY_AUTHENTICATED)
            return None
        if self.tls is None and not self.settings.auth_without_tls:
            self._send(replies.MUST_STARTTLS)
            return None
        mechanism, _, initial = argument.partition(" ")
        mechanism = mechanism.upper()
        if not mechanism or " " in initial:
            self._send(replies.SYNTAX_ERROR)
            return None
        if mechanism not in MECHANISMS:
            self._send(replies.UNKNOWN_MECHANISM)
            return None
        self._sasl = SaslExchange(mechanism)
        return self._sasl_step(self._sasl.start(initial or None))

    def _sasl_response(self, line: bytes) -> AuthAttempt | None:
        assert self._sasl is not None
        if len(line) > AUTH_LINE_MAX:
            self._abort_sasl()
            self._send(replies.AUTH_LINE_TOO_LONG)
            return None
        try:
            text = line[:-2].decode("ascii").strip(" ")
        except UnicodeDecodeError:
            self._abort_sasl()
            self._send(replies.BAD_BASE64)
            return None
        return self._sasl_step(self._sasl.respond(text))

    def _sasl_step(self, step: Challenge | Credentials | Reply) -> AuthAttempt | None:
        if isinstance(step, Challenge):
            self._state = State.AUTH
            self._out += replies.AUTH_CHALLENGE.with_text(step.text).encode()
            return None
        self._sasl = None
        self._state = State.READY
        if isinstance(step, Reply):
            self._send(step)
            return None
        return AuthAttempt(step.mechanism, step.authzid, step.username, step.password)

    def _abort_sasl(self) -> None:
        if self._state is State.AUTH:
            self._sasl = None
            self._state = State.READY

    def _cmd_mail(self, argument: str) -> MailFrom | None:
        if self.settings.auth_required and self.authenticated is None:
            needs_tls = self.tls is None and not self.settings.auth_without_tls
            self._send(replies.MUST_STARTTLS if needs_tls else replies.AUTH_REQUIRED)
            return None
        if argument[:5].upper() != "FROM:":
            self._send(replies.SYNTAX_ERROR)
            return None
        try:
            path, rest = split_path(argument[5:].lstrip(" "))
        except AddressError:
            self._send(replies.BAD_SENDER_ADDRESS)
            return None
        if rest and not self.esmtp:
            self._send(replies.PARAMETER_NOT_SUPPORTED)
            return None
        params = parse_mail_parameters(
            rest, self.settings.max_message_size, tls=self.tls is not None
        )
        if isinstance(params, Reply):
            self._send(params)
            return None
        try:
            sender = parse_path(path, smtputf8=params.smtputf8, allow_null=True)
        except AddressError as exc:
            self._send(replies.NON_ASCII_ADDRESS if exc.non_ascii else replies.BAD_SENDER_ADDRESS)
            return None
        return MailFrom(
            sender,
            params.size,
            params.body,
            params.smtputf8,
            params.ret,
            params.envid,
            params.requiretls,
        )

    def _cmd_rcpt(self, argument: str) -> RcptTo | None:
        txn = self._txn
        assert txn is not None
        if argument[:3].upper() != "TO:":
            self._send(replies.SYNTAX_ERROR)
            return None
        try:
            path, rest = split_path(argument[3:].lstrip(" "))
            if path.lower() == "<postmaster>":  # RFC 5321 4.5.1: must be accepted without domain
                recipient = Address("postmaster", self.settings.hostname.lower())
            else:
                parsed = parse_path(path, smtputf8=txn.params.smtputf8, allow_null=False)
                assert parsed is not None
                recipient = parsed
        except AddressError as exc:
            self._send(replies.NON_ASCII_ADDRESS if exc.non_ascii else replies.BAD_ADDRESS)
            return None
        if rest and not self.esmtp:
            self._send(replies.PARAMETER_NOT_SUPPORTED)
            return None
        params = parse_rcpt_parameters(rest) if rest else _NO_RCPT_PARAMETERS
        if isinstance(params, Reply):
            self._send(params)
            return None
        if len(txn.recipients) >= self.settings.max_recipients:
            self._send(replies.TOO_MANY_RECIPIENTS)
            return None
        return RcptTo(recipient, params)

    def _cmd_data(self, argument: str) -> None:
        if argument:
            self._send(replies.SYNTAX_ERROR)
            return
        self._data = DataReader(self.settings.max_message_size, self._open_sink)
        self._state = State.DATA
        self._send(replies.START_DATA)

    def _cmd_bdat(self, argument: str) -> None:
        self._bdat(argument, None)

    def _bdat(self, argument: str, refusal: Reply | None) -> None:
        parsed = parse_bdat(argument)
        if parsed is None:
            self._send(replies.SYNTAX_ERROR)
            return
        size, last = parsed
        if refusal is None and self._dropped:
            refusal = replies.STORAGE_FULL  # an earlier chunk was dropped for want of memory
        # The chunk's octets follow the command whatever we answer: consume them all, or they
        # would be read as commands.
        self._in_chunk = True
        self._chunk_left = size
        self._chunk_reply = refusal
        self._chunk_last = last
        if refusal is None:
            self._chunks_size += size

    def _cmd_rset(self, argument: str) -> None:
        if argument:
            self._send(replies.SYNTAX_ERROR)
            return
        self._reset_transaction()
        self._send(replies.RESET_OK)

    def _cmd_noop(self, argument: str) -> None:
        self._send(replies.OK)

    def _cmd_quit(self, argument: str) -> None:
        self._send(replies.CLOSING)

    def _cmd_help(self, argument: str) -> None:
        self._send(replies.HELP)

    def _cmd_vrfy(self, argument: str) -> None:
        self._send(replies.CANNOT_VRFY if argument else replies.SYNTAX_ERROR)


# The handler of each verb, written out so that a verb can be found by grep (a test checks
# that it names exactly the verbs of the transition table).
_COMMANDS: dict[str, Callable[[Session, str], Event | None]] = {
    "EHLO": Session._cmd_ehlo,
    "HELO": Session._cmd_helo,
    "STARTTLS": Session._cmd_starttls,
    "AUTH": Session._cmd_auth,
    "MAIL": Session._cmd_mail,
    "RCPT": Session._cmd_rcpt,
    "DATA": Session._cmd_data,
    "BDAT": Session._cmd_bdat,
    "RSET": Session._cmd_rset,
    "NOOP": Session._cmd_noop,
    "QUIT": Session._cmd_quit,
    "HELP": Session._cmd_help,
    "VRFY": Session._cmd_vrfy,
}
