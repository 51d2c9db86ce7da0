"""Tests for the Session state machine: every command in every state, TLS, AUTH, DATA and BDAT."""

from collections.abc import Callable

import pytest
from tests.support.session import (
    HOST,
    PASSWORD,
    QUEUED,
    TLS,
    Exchange,
    accept,
    answer_with,
    b64,
    drain,
    eof,
    feed,
    plain,
    ready,
    start,
    starttls,
    talk,
)

from sendgate.smtp import replies
from sendgate.smtp import session as session_module
from sendgate.smtp.address import Address
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
)
from sendgate.smtp.replies import Reply
from sendgate.smtp.session import ProtocolUsageError, Session, SessionSettings, State

GREETING = b"220 mx.example.test ESMTP ready\r\n"
ALICE = Address("alice", "example.org")
BOB = Address("bob", "example.net")

Setup = Callable[[], Session]


# Read through calls, so mypy does not carry narrowing of attributes across Session calls.
def state_of(session: Session) -> State:
    return session.state


def busy_of(session: Session) -> bool:
    return session.busy


def closed_of(session: Session) -> bool:
    return session.closed


def identity_of(session: Session) -> tuple[str | None, str | None, bool]:
    """Who the client said it is and who it proved to be: (authenticated, client_name, esmtp)."""
    return session.authenticated, session.client_name, session.esmtp


def mail(settings: SessionSettings | None = None, *, tls: bool = True, params: str = "") -> Session:
    session = ready(settings, tls=tls)
    assert talk(session, f"MAIL FROM:<alice@example.org>{params}").codes == ["250 2.1.0"]
    return session


def rcpt(settings: SessionSettings | None = None, *, tls: bool = True, params: str = "") -> Session:
    session = mail(settings, tls=tls, params=params)
    assert talk(session, "RCPT TO:<bob@example.net>").codes == ["250 2.1.5"]
    return session


def in_data(settings: SessionSettings | None = None) -> Session:
    session = rcpt(settings)
    assert talk(session, "DATA").lines == ["354 End data with <CR><LF>.<CR><LF>"]
    return session


# --- greeting and basic properties ---


def test_greeting_and_initial_state() -> None:
    session = Session(SessionSettings(HOST))
    assert session.data_to_send() == GREETING
    assert session.data_to_send() == b""
    assert state_of(session) is State.INIT
    assert not session.closed
    assert not session.busy
    assert session.tls is None
    assert session.authenticated is None
    assert session.errors == 0
    assert isinstance(session.next_event(), NeedData)


def test_partial_line_waits_for_more() -> None:
    session = start()
    assert feed(session, b"NO").output == b""
    assert feed(session, b"OP\r").output == b""
    assert feed(session, b"\n").lines == ["250 2.0.0 OK"]


# --- the transition table: every command in every state ---

_STATES = (State.INIT, State.READY, State.MAIL, State.RCPT, State.BDAT)


def _session_in(state: State) -> Session:
    # Plaintext AUTH allowed, no TLS yet: every command, STARTTLS included, is possible.
    settings = SessionSettings(HOST, auth_without_tls=True)
    if state is State.INIT:
        session = start(settings)
    elif state is State.READY:
        session = ready(settings, tls=False)
    elif state is State.MAIL:
        session = mail(settings, tls=False)
    else:
        session = rcpt(settings, tls=False)
        if state is State.BDAT:
            assert feed(session, b"BDAT 4\r\nab\r\n").lines == ["250 2.0.0 4 octets received"]
    assert state_of(session) is state
    return session


def _transitions() -> list[object]:
    i, r, m, c, b = _STATES
    t, x = State.TLS_WAIT, State.CLOSED
    seq = "503 5.5.1"
    # command: (reply, next state, event) in INIT, READY, MAIL, RCPT, BDAT
    table: list[tuple[str, list[tuple[str, State, str]]]] = [
        ("EHLO client.example", [("250", r, "")] * 5),
        ("HELO client.example", [("250", r, "")] * 5),
        (
            "STARTTLS",
            [(seq, i, ""), ("220 2.0.0", t, "StartTls"), (seq, m, ""), (seq, c, ""), (seq, b, "")],
        ),
        (
            f"AUTH PLAIN {plain()}",
            [(seq, i, ""), (seq, r, ""), (seq, m, ""), (seq, c, ""), (seq, b, "")],
        ),
        (
            "MAIL FROM:<carol@example.org>",
            [(seq, i, ""), ("250 2.1.0", m, "MailFrom"), (seq, m, ""), (seq, c, ""), (seq, b, "")],
        ),
        (
            "RCPT TO:<dave@example.org>",
            [
                (seq, i, ""),
                (seq, r, ""),
                ("250 2.1.5", c, "RcptTo"),
                ("250 2.1.5", c, "RcptTo"),
                (seq, b, ""),
            ],
        ),
        ("DATA", [(seq, i, ""), (seq, r, ""), (seq, m, ""), ("354", State.DATA, ""), (seq, b, "")]),
        (
            "BDAT 0 LAST",
            [
                (seq, i, ""),
                (seq, r, ""),
                (seq, m, ""),
                ("250 2.0.0", r, "MessageReceived"),
                ("250 2.0.0", r, "MessageReceived"),
            ],
        ),
        ("RSET", [("250 2.0.0", i, ""), *[("250 2.0.0", r, "")] * 4]),
        ("NOOP", [("250 2.0.0", s, "") for s in _STATES]),
        ("QUIT", [("221 2.0.0", x, "")] * 5),
        ("HELP", [("214 2.0.0", s, "") for s in _STATES]),
        ("VRFY bob", [("252 2.0.0", s, "") for s in _STATES]),
        ("EXPN staff", [("502 5.5.1", s, "") for s in _STATES]),
        ("XYZZY", [("500 5.5.2", s, "") for s in _STATES]),
    ]
    return [
        pytest.param(command, state, *outcome, id=f"{command.split()[0]}-in-{state.name}")
        for command, outcomes in table
        for state, outcome in zip(_STATES, outcomes, strict=True)
    ]


@pytest.mark.parametrize(("command", "state", "code", "next_state", "event"), _transitions())
def test_every_command_in_every_state(
    command: str, state: State, code: str, next_state: State, event: str
) -> None:
    session = _session_in(state)
    exchange = talk(session, command)
    assert exchange.codes == [code]
    assert state_of(session) is next_state
    assert exchange.event_names == ([event] if event else [])


@pytest.mark.parametrize(
    ("state", "command", "line"),
    [
        (State.INIT, "MAIL FROM:<a@example.org>", "503 5.5.1 Send EHLO first"),
        (State.INIT, "RCPT TO:<a@example.org>", "503 5.5.1 Send EHLO first"),
        (State.INIT, "DATA", "503 5.5.1 Send EHLO first"),
        (State.INIT, "STARTTLS", "503 5.5.1 Send EHLO first"),
        (State.INIT, f"AUTH PLAIN {plain()}", "503 5.5.1 Send EHLO first"),
        (State.READY, "RCPT TO:<a@example.org>", "503 5.5.1 Need MAIL before RCPT"),
        (State.READY, "DATA", "503 5.5.1 Need MAIL before RCPT"),
        (State.MAIL, "DATA", "503 5.5.1 Need RCPT before DATA"),
        (State.MAIL, "MAIL FROM:<a@example.org>", "503 5.5.1 Sender already specified"),
        (State.RCPT, "MAIL FROM:<a@example.org>", "503 5.5.1 Sender already specified"),
        (State.BDAT, "MAIL FROM:<a@example.org>", "503 5.5.1 Sender already specified"),
        (State.BDAT, "DATA", "503 5.5.1 DATA and BDAT cannot be mixed"),
        (State.BDAT, "RCPT TO:<a@example.org>", "503 5.5.1 Bad sequence of commands"),
        (State.RCPT, "STARTTLS", "503 5.5.1 Bad sequence of commands"),
        (State.MAIL, f"AUTH PLAIN {plain()}", "503 5.5.1 Bad sequence of commands"),
        (State.READY, f"AUTH PLAIN {plain()}", "503 5.5.1 Already authenticated"),
    ],
)
def test_sequence_error_texts(state: State, command: str, line: str) -> None:
    session = _session_in(state)
    assert talk(session, command).lines == [line]
    assert state_of(session) is state


@pytest.mark.parametrize(
    ("state", "line"),
    [
        (State.INIT, "503 5.5.1 Send EHLO first"),
        (State.READY, "503 5.5.1 Need MAIL before RCPT"),
        (State.MAIL, "503 5.5.1 Need RCPT before DATA"),
    ],
)
def test_bdat_out_of_sequence_consumes_its_octets(state: State, line: str) -> None:
    session = _session_in(state)
    payload = b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<x@example.org>\r\nQUIT\r\n"
    exchange = feed(session, b"BDAT %d\r\n" % len(payload) + payload + b"NOOP\r\n")
    # One refusal for the BDAT, then the NOOP: the chunk's octets were never read as commands.
    assert exchange.lines == [line, "250 2.0.0 OK"]
    assert exchange.events == []
    assert state_of(session) is state


def test_refused_bdat_octets_never_join_a_later_message() -> None:
    session = ready()
    assert feed(session, b"BDAT 5\r\nEVIL!").codes == ["503 5.5.1"]
    talk(session, "MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.net>")
    exchange = feed(session, b"BDAT 5 LAST\r\nabc\r\n")
    assert exchange.events == [MessageReceived(ALICE, (BOB,), "7BIT", False, b"abc\r\n")]


def test_bdat_out_of_sequence_across_reads() -> None:
    session = _session_in(State.READY)
    exchange = feed(session, b"BDAT 6 LAST\r\nQU", b"IT\r\n", b"NOOP\r\n")
    assert exchange.lines == ["503 5.5.1 Need MAIL before RCPT", "250 2.0.0 OK"]
    assert not session.closed


# --- EHLO and HELO ---

_BASE_EXTENSIONS = [
    "PIPELINING",
    "SIZE 26214400",
    "8BITMIME",
    "SMTPUTF8",
    "ENHANCEDSTATUSCODES",
    "CHUNKING",
    "DSN",
]


@pytest.mark.parametrize(
    ("settings", "tls", "extra"),
    [
        (SessionSettings(HOST), False, ["STARTTLS"]),
        (SessionSettings(HOST), True, ["REQUIRETLS", "AUTH PLAIN LOGIN"]),
        (SessionSettings(HOST, tls_available=False), False, []),
        (SessionSettings(HOST, auth_without_tls=True), False, ["STARTTLS", "AUTH PLAIN LOGIN"]),
        (SessionSettings(HOST, auth_without_tls=True), True, ["REQUIRETLS", "AUTH PLAIN LOGIN"]),
    ],
)
def test_ehlo_advertises(settings: SessionSettings, tls: bool, extra: list[str]) -> None:
    session = start(settings, tls=tls)
    lines = talk(session, "EHLO client.example").lines
    expected = [HOST, *_BASE_EXTENSIONS, *extra]
    assert lines == [f"250-{text}" for text in expected[:-1]] + [f"250 {expected[-1]}"]
    assert session.esmtp
    assert session.client_name == "client.example"


def test_ehlo_advertises_the_configured_size() -> None:
    session = start(SessionSettings(HOST, max_message_size=1000))
    assert "250-SIZE 1000" in talk(session, "EHLO client.example").lines


@pytest.mark.parametrize("command", ["EHLO", "EHLO a b", "HELO", "EHLO " + "a" * 256])
def test_greeting_syntax_errors(command: str) -> None:
    session = start()
    assert talk(session, command).lines == ["501 5.5.4 Syntax error in parameters or arguments"]
    assert state_of(session) is State.INIT
    assert session.client_name is None


def test_ehlo_name_of_255_octets() -> None:
    session = start()
    assert talk(session, "EHLO " + "a" * 255).codes == ["250"]


def test_helo_has_no_extensions() -> None:
    session = start(tls=True)
    exchange = talk(session, "HELO client.example")
    assert exchange.lines == [f"250 {HOST}"]
    assert not session.esmtp
    assert session.client_name == "client.example"


def test_mail_parameters_after_helo_refused() -> None:
    session = start(tls=True)
    talk(session, "HELO client.example", f"AUTH PLAIN {plain()}")
    exchange = talk(session, "MAIL FROM:<alice@example.org> SIZE=10")
    assert exchange.lines == ["555 5.5.4 Parameter not recognized or not implemented"]
    assert exchange.events == []
    exchange = talk(session, "MAIL FROM:<alice@example.org>")
    assert exchange.events == [MailFrom(ALICE, None, "7BIT", False)]


def test_ehlo_resets_the_transaction() -> None:
    session = rcpt()
    assert talk(session, "EHLO client.example").codes == ["250"]
    assert talk(session, "RCPT TO:<bob@example.net>").lines == ["503 5.5.1 Need MAIL before RCPT"]
    assert session.authenticated == "alice"


# --- STARTTLS ---


def test_starttls_discards_pipelined_plaintext() -> None:
    session = ready(SessionSettings(HOST, auth_required=False), tls=False, login=False)
    injected = b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n"
    exchange = feed(session, b"STARTTLS\r\n" + injected)
    assert exchange.lines == ["220 2.0.0 Ready to start TLS"]
    assert exchange.events == [StartTls()]
    assert state_of(session) is State.TLS_WAIT
    assert session.discarded_plaintext == len(injected)
    session.tls_established(TLS)
    # Nothing of the injected commands survives the upgrade.
    assert isinstance(session.next_event(), NeedData)
    assert session.data_to_send() == b""
    assert talk(session, "RCPT TO:<victim@example.org>").lines == ["503 5.5.1 Send EHLO first"]
    exchange = talk(session, "EHLO client.example", "MAIL FROM:<alice@example.org>")
    assert exchange.events == [MailFrom(ALICE, None, "7BIT", False)]


def test_starttls_discards_bytes_received_before_the_answer() -> None:
    session = ready(tls=False, login=False)
    session.receive_data(b"STARTTLS\r\n")
    assert isinstance(session.next_event(), StartTls)
    session.receive_data(b"NOOP\r\n")
    session.answer(replies.READY_TLS)
    assert session.discarded_plaintext == 6
    assert isinstance(session.next_event(), NeedData)
    assert session.data_to_send() == b"220 2.0.0 Ready to start TLS\r\n"


def test_bytes_arriving_in_tls_wait_are_discarded() -> None:
    session = ready(tls=False, login=False)
    assert talk(session, "STARTTLS").codes == ["220 2.0.0"]
    exchange = feed(session, b"NOOP\r\n", b"QUIT\r\n")
    assert exchange == Exchange(b"", [])
    assert session.discarded_plaintext == 12
    assert state_of(session) is State.TLS_WAIT
    assert not session.closed


def test_tls_established_resets_to_init() -> None:
    session = ready(SessionSettings(HOST, auth_without_tls=True), tls=False)
    assert identity_of(session) == ("alice", "client.example", True)
    starttls(session)
    assert session.tls == TLS
    assert state_of(session) is State.INIT
    assert identity_of(session) == (None, None, False)
    assert talk(session, "MAIL FROM:<alice@example.org>").lines == ["503 5.5.1 Send EHLO first"]
    lines = talk(session, "EHLO client.example").lines
    assert "250 AUTH PLAIN LOGIN" in lines
    assert not any("STARTTLS" in line for line in lines)
    # Authentication was forgotten with everything else.
    assert talk(session, "MAIL FROM:<alice@example.org>").lines == [
        "530 5.7.0 Authentication required"
    ]


def test_second_starttls_refused() -> None:
    session = ready(tls=False, login=False)
    starttls(session)
    # Refused as such even before EHLO, and again after it.
    assert talk(session, "STARTTLS").lines == ["503 5.5.1 TLS already active"]
    talk(session, "EHLO client.example")
    exchange = talk(session, "STARTTLS")
    assert exchange.lines == ["503 5.5.1 TLS already active"]
    assert exchange.events == []
    assert state_of(session) is State.READY


def test_starttls_on_implicit_tls_refused() -> None:
    session = ready(tls=True, login=False)
    assert talk(session, "STARTTLS").lines == ["503 5.5.1 TLS already active"]


def test_starttls_with_argument() -> None:
    session = ready(tls=False, login=False)
    exchange = talk(session, "STARTTLS now")
    assert exchange.codes == ["501 5.5.4"]
    assert exchange.events == []


def test_starttls_not_available() -> None:
    session = ready(SessionSettings(HOST, tls_available=False), tls=False, login=False)
    exchange = talk(session, "STARTTLS")
    assert exchange.lines == ["454 4.7.0 TLS not available"]
    assert exchange.events == []
    assert session.errors == 0


def test_starttls_refused_by_the_application_keeps_reading_plaintext() -> None:
    session = ready(tls=False, login=False)
    exchange = feed(session, b"STARTTLS\r\nNOOP\r\n", answer=answer_with(replies.TLS_NOT_AVAILABLE))
    assert exchange.codes == ["454 4.7.0", "250 2.0.0"]
    assert state_of(session) is State.READY
    assert session.discarded_plaintext == 0


def test_tls_established_without_starttls_is_misuse() -> None:
    session = ready(tls=False, login=False)
    with pytest.raises(ProtocolUsageError):
        session.tls_established(TLS)
    starttls(session)
    with pytest.raises(ProtocolUsageError):
        session.tls_established(TLS)


# --- AUTH ---


def test_auth_before_tls_refused_and_not_advertised() -> None:
    session = start()
    lines = talk(session, "EHLO client.example").lines
    assert not any("AUTH" in line for line in lines)
    exchange = talk(session, f"AUTH PLAIN {plain()}")
    assert exchange.lines == ["530 5.7.0 Must issue a STARTTLS command first"]
    assert exchange.events == []
    assert session.authenticated is None
    assert state_of(session) is State.READY


def test_auth_without_tls_when_allowed() -> None:
    session = ready(SessionSettings(HOST, auth_without_tls=True), tls=False, login=False)
    exchange = talk(session, f"AUTH PLAIN {plain()}")
    assert exchange.codes == ["235 2.7.0"]
    assert session.authenticated == "alice"


def test_auth_plain_with_initial_response() -> None:
    session = ready(login=False)
    exchange = talk(session, f"AUTH PLAIN {plain()}")
    assert exchange.events == [AuthAttempt("PLAIN", "", "alice", PASSWORD)]
    assert exchange.lines == ["235 2.7.0 Authentication successful"]
    assert session.authenticated == "alice"
    assert state_of(session) is State.READY


def test_auth_plain_with_authzid() -> None:
    session = ready(login=False)
    exchange = talk(session, f"AUTH PLAIN {plain(authzid='admin')}")
    assert exchange.events == [AuthAttempt("PLAIN", "admin", "alice", PASSWORD)]


def test_auth_plain_without_initial_response() -> None:
    session = ready(login=False)
    assert talk(session, "AUTH PLAIN").lines == ["334 "]
    assert state_of(session) is State.AUTH
    assert session.busy is False
    exchange = talk(session, plain())
    assert exchange.events == [AuthAttempt("PLAIN", "", "alice", PASSWORD)]
    assert exchange.codes == ["235 2.7.0"]


def test_auth_login_without_initial_response() -> None:
    session = ready(login=False)
    assert talk(session, "AUTH LOGIN").lines == ["334 VXNlcm5hbWU6"]
    assert talk(session, b64("alice")).lines == ["334 UGFzc3dvcmQ6"]
    exchange = talk(session, b64(PASSWORD))
    assert exchange.events == [AuthAttempt("LOGIN", "", "alice", PASSWORD)]
    assert exchange.codes == ["235 2.7.0"]
    assert session.authenticated == "alice"


def test_auth_login_with_initial_response() -> None:
    session = ready(login=False)
    assert talk(session, f"AUTH LOGIN {b64('alice')}").lines == ["334 UGFzc3dvcmQ6"]
    exchange = talk(session, b64(PASSWORD))
    assert exchange.events == [AuthAttempt("LOGIN", "", "alice", PASSWORD)]


def test_auth_exchange_pipelined_in_one_read() -> None:
    session = ready(login=False)
    exchange = talk(session, "auth login", b64("alice"), b64(PASSWORD), "NOOP")
    assert exchange.codes == ["334", "334", "235 2.7.0", "250 2.0.0"]
    assert exchange.event_names == ["AuthAttempt"]


@pytest.mark.parametrize(
    "before",
    [["AUTH PLAIN"], ["AUTH LOGIN"], ["AUTH LOGIN", b64("alice")], [f"AUTH LOGIN {b64('alice')}"]],
)
def test_auth_cancelled_with_star(before: list[str]) -> None:
    session = ready(login=False)
    talk(session, *before)
    assert state_of(session) is State.AUTH
    exchange = talk(session, "*")
    assert exchange.lines == ["501 5.7.0 Authentication cancelled"]
    assert exchange.events == []
    assert state_of(session) is State.READY
    assert session.authenticated is None
    assert talk(session, f"AUTH PLAIN {plain()}").codes == ["235 2.7.0"]


def test_auth_initial_response_star_cancels() -> None:
    session = ready(login=False)
    assert talk(session, "AUTH PLAIN *").codes == ["501 5.7.0"]
    assert state_of(session) is State.READY


@pytest.mark.parametrize(
    "lines",
    [
        ["AUTH PLAIN !!!!"],
        ["AUTH PLAIN", "!!!!"],
        ["AUTH PLAIN", b64("alice:secret")],
        ["AUTH LOGIN", "YWJ"],
        ["AUTH LOGIN", b64("alice"), "not base64"],
    ],
)
def test_auth_bad_base64(lines: list[str]) -> None:
    session = ready(login=False)
    exchange = talk(session, *lines)
    assert exchange.lines[-1] == "501 5.5.2 Cannot decode response"
    assert exchange.events == []
    assert state_of(session) is State.READY


def test_auth_response_with_non_ascii_bytes() -> None:
    session = ready(login=False)
    talk(session, "AUTH PLAIN")
    exchange = feed(session, b"\xff\xfe\r\n")
    assert exchange.codes == ["501 5.5.2"]
    assert state_of(session) is State.READY


def test_auth_response_is_never_executed_as_a_command() -> None:
    session = ready(login=False)
    talk(session, "AUTH LOGIN")
    exchange = talk(session, "MAIL FROM:<alice@example.org>")
    assert exchange.codes == ["501 5.5.2"]
    assert exchange.events == []
    assert state_of(session) is State.READY


@pytest.mark.parametrize(
    ("command", "line"),
    [
        ("AUTH", "501 5.5.4 Syntax error in parameters or arguments"),
        ("AUTH PLAIN a b", "501 5.5.4 Syntax error in parameters or arguments"),
        ("AUTH CRAM-MD5", "504 5.5.4 Unrecognized authentication mechanism"),
        (f"AUTH XOAUTH2 {plain()}", "504 5.5.4 Unrecognized authentication mechanism"),
    ],
)
def test_auth_command_errors(command: str, line: str) -> None:
    session = ready(login=False)
    assert talk(session, command).lines == [line]
    assert state_of(session) is State.READY


def test_auth_refused_by_the_application() -> None:
    session = ready(login=False)
    exchange = talk(session, f"AUTH PLAIN {plain()}", answer=answer_with(replies.AUTH_FAILED))
    assert exchange.lines == ["535 5.7.8 Authentication credentials invalid"]
    assert session.authenticated is None
    assert state_of(session) is State.READY
    assert session.errors == 1
    assert talk(session, "MAIL FROM:<alice@example.org>").codes == ["530 5.7.0"]


def test_auth_temporary_failure_is_not_an_error() -> None:
    session = ready(login=False)
    refuse = answer_with(replies.AUTH_TEMPORARY_FAILURE)
    assert talk(session, f"AUTH PLAIN {plain()}", answer=refuse).codes == ["454 4.7.0"]
    assert session.errors == 0
    assert session.authenticated is None


@pytest.mark.parametrize("chunked", [False, True])
def test_auth_response_line_too_long(chunked: bool) -> None:
    session = ready(login=False)
    talk(session, "AUTH PLAIN")
    line = b"A" * 13000 + b"\r\n"
    # In pieces: a partial line over the buffer limit is dropped, then the rest of it too.
    chunks = [line[:6000], line[6000:12500], line[12500:12900], line[12900:]] if chunked else [line]
    exchange = feed(session, *chunks, b"NOOP\r\n")
    assert exchange.lines == ["500 5.5.6 Authentication exchange line too long", "250 2.0.0 OK"]
    assert exchange.events == []
    assert state_of(session) is State.READY


def test_auth_response_line_limit_is_12288_octets() -> None:
    password = "p" * 9206  # "\0alice\0" + password is 9213 octets, 12284 in base64
    response = plain(password=password)
    assert len(response) == 12284
    session = ready(login=False)
    talk(session, "AUTH PLAIN")
    exchange = feed(session, b"  " + response.encode() + b"\r\n")  # 12288 octets with CRLF
    assert exchange.events == [AuthAttempt("PLAIN", "", "alice", password)]
    session = ready(login=False)
    talk(session, "AUTH PLAIN")
    exchange = feed(session, b"   " + response.encode() + b"\r\n")
    assert exchange.codes == ["500 5.5.6"]


def test_bare_newline_aborts_the_auth_exchange() -> None:
    session = ready(login=False)
    talk(session, "AUTH LOGIN")
    exchange = feed(session, b"YWxpY2U=\n")
    assert exchange.lines == ["500 5.5.2 Bare CR or LF not allowed, use CRLF"]
    assert state_of(session) is State.READY


# --- MAIL ---


@pytest.mark.parametrize(
    ("settings", "tls", "line"),
    [
        (SessionSettings(HOST), False, "530 5.7.0 Must issue a STARTTLS command first"),
        (SessionSettings(HOST), True, "530 5.7.0 Authentication required"),
        (
            SessionSettings(HOST, auth_without_tls=True),
            False,
            "530 5.7.0 Authentication required",
        ),
    ],
)
def test_mail_before_auth_refused(settings: SessionSettings, tls: bool, line: str) -> None:
    session = ready(settings, tls=tls, login=False)
    exchange = talk(session, "MAIL FROM:<alice@example.org>")
    assert exchange.lines == [line]
    assert exchange.events == []
    assert state_of(session) is State.READY


def test_mail_without_auth_when_not_required() -> None:
    session = ready(SessionSettings(HOST, auth_required=False), tls=False, login=False)
    assert talk(session, "MAIL FROM:<alice@example.org>").event_names == ["MailFrom"]


def test_mail_from_event() -> None:
    session = ready()
    exchange = talk(session, "mail from:<alice@example.org> SIZE=1000 BODY=8BITMIME")
    assert exchange.events == [MailFrom(ALICE, 1000, "8BITMIME", False)]
    assert exchange.lines == ["250 2.1.0 Sender OK"]
    assert state_of(session) is State.MAIL
    assert session.busy


def test_null_sender() -> None:
    session = ready()
    assert talk(session, "MAIL FROM:<>").events == [MailFrom(None, None, "7BIT", False)]


def test_mail_source_route_is_ignored() -> None:
    session = ready()
    exchange = talk(session, "MAIL FROM:<@relay.example,@hop.example:alice@example.org>")
    assert exchange.events == [MailFrom(ALICE, None, "7BIT", False)]


@pytest.mark.parametrize(
    ("command", "code"),
    [
        ("MAIL", "501 5.5.4"),
        ("MAIL TO:<alice@example.org>", "501 5.5.4"),
        ("MAIL FROM:alice@example.org", "501 5.1.7"),
        ("MAIL FROM:<alice@>", "501 5.1.7"),
        ("MAIL FROM:<alice@example.org", "501 5.1.7"),
        ("MAIL FROM:<alice@example.org>SIZE=1", "501 5.1.7"),
        ("MAIL FROM:<@relay.example alice@example.org>", "501 5.1.7"),
        ("MAIL FROM:<alice@example.org> SIZE=x", "501 5.5.4"),
        ("MAIL FROM:<alice@example.org> FOO=1", "555 5.5.4"),
        ("MAIL FROM:<alice@example.org> BODY=BINARYMIME", "555 5.5.4"),
    ],
)
def test_mail_errors(command: str, code: str) -> None:
    session = ready()
    exchange = talk(session, command)
    assert exchange.codes == [code]
    assert exchange.events == []
    assert state_of(session) is State.READY


def test_mail_size_over_limit() -> None:
    session = ready(SessionSettings(HOST, max_message_size=1000))
    exchange = talk(session, "MAIL FROM:<alice@example.org> SIZE=1001")
    assert exchange.lines == ["552 5.3.4 Message size exceeds fixed maximum message size"]
    assert exchange.events == []
    assert state_of(session) is State.READY
    assert talk(session, "MAIL FROM:<alice@example.org> SIZE=1000").codes == ["250 2.1.0"]


def test_smtputf8_sender_needs_the_parameter() -> None:
    session = ready()
    exchange = talk(session, "MAIL FROM:<j\u00f6rg@b\u00fccher.example>")
    assert exchange.lines == ["553 5.6.7 Non-ASCII address requires SMTPUTF8"]
    assert exchange.events == []
    exchange = talk(session, "MAIL FROM:<j\u00f6rg@b\u00fccher.example> SMTPUTF8")
    assert exchange.events == [
        MailFrom(Address("j\u00f6rg", "b\u00fccher.example"), None, "7BIT", True)
    ]


# --- RCPT ---


def test_rcpt_to_event() -> None:
    session = mail()
    exchange = talk(session, "rcpt to:<bob@example.net>")
    assert exchange.events == [RcptTo(BOB)]
    assert exchange.lines == ["250 2.1.5 Recipient OK"]
    assert state_of(session) is State.RCPT


@pytest.mark.parametrize("path", ["<postmaster>", "<Postmaster>", "<POSTMASTER>"])
def test_postmaster_without_domain(path: str) -> None:
    session = mail()
    assert talk(session, f"RCPT TO:{path}").events == [RcptTo(Address("postmaster", HOST))]


def test_postmaster_domain_is_the_lower_cased_hostname() -> None:
    session = mail(SessionSettings("MX.Example.TEST"))
    assert talk(session, "RCPT TO:<postmaster>").events == [RcptTo(Address("postmaster", HOST))]


def test_rcpt_source_route_is_ignored() -> None:
    session = mail()
    assert talk(session, "RCPT TO:<@relay.example:bob@example.net>").events == [RcptTo(BOB)]


@pytest.mark.parametrize(
    ("command", "line"),
    [
        ("RCPT", "501 5.5.4 Syntax error in parameters or arguments"),
        ("RCPT FROM:<bob@example.net>", "501 5.5.4 Syntax error in parameters or arguments"),
        ("RCPT TO:<>", "501 5.1.3 Bad address syntax"),
        ("RCPT TO:bob@example.net", "501 5.1.3 Bad address syntax"),
        (
            "RCPT TO:<bob@example.net> NOTIFY=NEVER,SUCCESS",
            "501 5.5.4 Syntax error in parameters or arguments",
        ),
        (
            "RCPT TO:<bob@example.net> NOTIFY=FAILURE NOTIFY=DELAY",
            "501 5.5.4 Syntax error in parameters or arguments",
        ),
        ("RCPT TO:<postmaster> X=1", "555 5.5.4 Parameter not recognized or not implemented"),
        ("RCPT TO:<j\u00f6rg@example.net>", "553 5.6.7 Non-ASCII address requires SMTPUTF8"),
    ],
)
def test_rcpt_errors(command: str, line: str) -> None:
    session = mail()
    exchange = talk(session, command)
    assert exchange.lines == [line]
    assert exchange.events == []
    assert state_of(session) is State.MAIL


def test_smtputf8_recipient_with_smtputf8_transaction() -> None:
    session = mail(params=" SMTPUTF8")
    exchange = talk(session, "RCPT TO:<j\u00f6rg@b\u00fccher.example>")
    assert exchange.events == [RcptTo(Address("j\u00f6rg", "b\u00fccher.example"))]


def test_too_many_recipients() -> None:
    session = mail(SessionSettings(HOST, max_recipients=2))
    exchange = talk(
        session, "RCPT TO:<a@example.net>", "RCPT TO:<b@example.net>", "RCPT TO:<c@example.net>"
    )
    assert exchange.codes == ["250 2.1.5", "250 2.1.5", "452 4.5.3"]
    assert exchange.event_names == ["RcptTo", "RcptTo"]
    assert session.errors == 0
    assert state_of(session) is State.RCPT
    exchange = talk(session, "DATA", "hi", ".")
    assert isinstance(message := exchange.events[0], MessageReceived)
    assert message.recipients == (Address("a", "example.net"), Address("b", "example.net"))


def test_refused_recipients_are_not_in_the_envelope() -> None:
    session = mail()
    refuse = answer_with(Reply(550, "5.1.1", "No such user"))
    assert talk(session, "RCPT TO:<nobody@example.net>", answer=refuse).lines == [
        "550 5.1.1 No such user"
    ]
    assert state_of(session) is State.MAIL
    assert talk(session, "DATA").codes == ["503 5.5.1"]
    talk(session, "RCPT TO:<bob@example.net>")
    talk(session, "RCPT TO:<nobody@example.net>", answer=refuse)
    assert state_of(session) is State.RCPT
    exchange = talk(session, "DATA", "hi", ".")
    assert isinstance(message := exchange.events[0], MessageReceived)
    assert message.recipients == (BOB,)


# --- DATA ---


def test_full_transaction() -> None:
    session = in_data()
    assert state_of(session) is State.DATA
    assert busy_of(session)
    content = b"From: alice@example.org\r\nSubject: hi\r\n\r\nHello Bob\r\n"
    exchange = feed(session, content + b".\r\n")
    assert exchange.events == [MessageReceived(ALICE, (BOB,), "7BIT", False, content)]
    assert exchange.lines == ["250 2.0.0 queued as Q1"]
    assert state_of(session) is State.READY
    assert not busy_of(session)
    # The transaction is over: a new one needs MAIL.
    assert talk(session, "RCPT TO:<bob@example.net>").codes == ["503 5.5.1"]


def test_message_carries_the_transaction_parameters() -> None:
    session = rcpt(params=" BODY=8BITMIME SMTPUTF8")
    exchange = talk(session, "DATA", "Subject: \u00e9", ".")
    assert isinstance(message := exchange.events[0], MessageReceived)
    assert (message.body, message.smtputf8) == ("8BITMIME", True)
    assert message.content == "Subject: \u00e9\r\n".encode()
    assert message.size == len(message.content)


def test_data_with_argument() -> None:
    session = rcpt()
    assert talk(session, "DATA now").codes == ["501 5.5.4"]
    assert state_of(session) is State.RCPT


def test_empty_message() -> None:
    session = in_data()
    exchange = feed(session, b".\r\n")
    assert isinstance(message := exchange.events[0], MessageReceived)
    assert message.content == b""


def test_dot_unstuffing() -> None:
    session = in_data()
    exchange = feed(session, b"..leading dot\r\n...\r\nmid.dle\r\n.\r\n")
    assert isinstance(message := exchange.events[0], MessageReceived)
    assert message.content == b".leading dot\r\n..\r\nmid.dle\r\n"


def test_data_byte_by_byte_then_pipelined_commands() -> None:
    session = in_data()
    raw = b"Subject: x\r\n\r\nbody\r\n.\r\nRSET\r\nNOOP\r\n"
    exchange = feed(session, *[raw[i : i + 1] for i in range(len(raw))])
    assert exchange.codes == ["250 2.0.0", "250 2.0.0", "250 2.0.0"]
    assert isinstance(message := exchange.events[0], MessageReceived)
    assert message.content == b"Subject: x\r\n\r\nbody\r\n"


@pytest.mark.parametrize("size", [101, 200_000])
def test_oversize_body_refused_after_the_final_dot(size: int) -> None:
    session = in_data(SessionSettings(HOST, max_message_size=100))
    body = (b"x" * 98 + b"\r\n") * (size // 100 + 1)
    exchange = feed(session, body[:size] + b"\r\n.\r\n")
    assert exchange.lines == ["552 5.3.4 Message size exceeds fixed maximum message size"]
    assert exchange.events == []
    assert state_of(session) is State.READY
    assert talk(session, "RCPT TO:<bob@example.net>").codes == ["503 5.5.1"]


def test_body_at_the_size_limit_accepted() -> None:
    session = in_data(SessionSettings(HOST, max_message_size=100))
    body = b"x" * 98 + b"\r\n"
    assert feed(session, body + b".\r\n").event_names == ["MessageReceived"]


def test_text_line_over_998_octets_refused() -> None:
    session = in_data()
    exchange = feed(session, b"a" * 999 + b"\r\n.\r\n")
    assert exchange.lines == ["550 5.6.0 Message contains a line longer than 998 octets"]
    assert exchange.events == []
    assert state_of(session) is State.READY


def test_text_line_of_998_octets_accepted() -> None:
    session = in_data()
    assert feed(session, b"a" * 998 + b"\r\n.\r\n").event_names == ["MessageReceived"]


_SMUGGLED = (
    b"MAIL FROM:<ceo@example.org>\r\n"
    b"RCPT TO:<victim@example.net>\r\n"
    b"DATA\r\n"
    b"From: ceo@example.org\r\n\r\nWire the money.\r\n"
)


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n"])
@pytest.mark.parametrize("chunked", [False, True], ids=["one-read", "byte-by-byte"])
def test_smuggling_is_one_refused_message(fake_end: bytes, chunked: bool) -> None:
    session = in_data(SessionSettings(HOST, auth_required=False))
    raw = b"From: alice@example.org\r\n\r\nhello" + fake_end + _SMUGGLED + b".\r\n"
    chunks = [raw[i : i + 1] for i in range(len(raw))] if chunked else [raw]
    exchange = feed(session, *chunks)
    assert exchange.lines == ["550 5.6.0 Message contains bare CR or LF, use CRLF"]
    assert exchange.events == []
    assert state_of(session) is State.READY
    assert talk(session, "QUIT").codes == ["221 2.0.0"]


@pytest.mark.parametrize(
    "refusal",
    [replies.LOCAL_ERROR, replies.STORAGE_FULL, replies.BAD_HEADER, replies.HEADER_FROM_NOT_OWNED],
)
def test_message_refused_by_the_application(refusal: Reply) -> None:
    session = in_data()
    exchange = feed(session, b"hi\r\n.\r\n", answer=answer_with(refusal))
    assert exchange.output == refusal.encode()
    assert state_of(session) is State.READY
    assert talk(session, "RCPT TO:<bob@example.net>").codes == ["503 5.5.1"]


# --- BDAT ---


def test_bdat_chunks() -> None:
    session = rcpt()
    exchange = feed(session, b"BDAT 5\r\nhello")
    assert exchange.lines == ["250 2.0.0 5 octets received"]
    assert state_of(session) is State.BDAT
    assert session.busy
    exchange = feed(session, b"BDAT 8 LAST\r\n world\r\n")
    assert exchange.events == [MessageReceived(ALICE, (BOB,), "7BIT", False, b"hello world\r\n")]
    assert exchange.lines == ["250 2.0.0 queued as Q1"]
    assert state_of(session) is State.READY


def test_bdat_octets_are_never_commands() -> None:
    session = rcpt()
    exchange = feed(session, b"BDAT 12 last\r\nQUI", b"T\r\nNO", b"OP\r\nNOOP\r\n")
    assert exchange.lines == ["250 2.0.0 queued as Q1", "250 2.0.0 OK"]
    assert isinstance(message := exchange.events[0], MessageReceived)
    assert message.content == b"QUIT\r\nNOOP\r\n"
    assert not session.closed


def test_bdat_zero_last_ends_the_message() -> None:
    session = rcpt()
    exchange = feed(session, b"BDAT 5\r\nabc\r\nBDAT 0 LAST\r\n")
    assert exchange.lines == ["250 2.0.0 5 octets received", "250 2.0.0 queued as Q1"]
    assert isinstance(message := exchange.events[0], MessageReceived)
    assert message.content == b"abc\r\n"


def test_bdat_zero_last_alone_is_an_empty_message() -> None:
    session = rcpt()
    exchange = feed(session, b"BDAT 0 LAST\r\n")
    assert exchange.events == [MessageReceived(ALICE, (BOB,), "7BIT", False, b"")]


def test_bdat_too_big_in_one_chunk() -> None:
    session = rcpt(SessionSettings(HOST, max_message_size=10))
    exchange = feed(session, b"BDAT 11 LAST\r\n" + b"x" * 11 + b"NOOP\r\n")
    assert exchange.lines == [
        "552 5.3.4 Message size exceeds fixed maximum message size",
        "250 2.0.0 OK",
    ]
    assert exchange.events == []
    assert state_of(session) is State.READY


def test_bdat_too_big_over_several_chunks() -> None:
    session = rcpt(SessionSettings(HOST, max_message_size=10))
    exchange = feed(session, b"BDAT 6\r\nxxxxxxBDAT 6 LAST\r\nyyyyyy")
    assert exchange.codes == ["250 2.0.0", "552 5.3.4"]
    assert exchange.events == []
    assert state_of(session) is State.READY


def test_bdat_too_big_before_last_ends_the_transaction() -> None:
    session = rcpt(SessionSettings(HOST, max_message_size=10))
    exchange = feed(session, b"BDAT 11\r\n" + b"x" * 11 + b"BDAT 1 LAST\r\nyNOOP\r\n")
    assert exchange.lines == [
        "552 5.3.4 Message size exceeds fixed maximum message size",
        "503 5.5.1 Need MAIL before RCPT",
        "250 2.0.0 OK",
    ]
    assert exchange.events == []


def test_bdat_at_the_size_limit_accepted() -> None:
    session = rcpt(SessionSettings(HOST, max_message_size=10))
    exchange = feed(session, b"BDAT 4\r\nxxxxBDAT 6 LAST\r\nyyyy\r\n")
    assert isinstance(message := exchange.events[0], MessageReceived)
    assert message.content == b"xxxxyyyy\r\n"


def test_data_after_bdat() -> None:
    session = rcpt()
    feed(session, b"BDAT 2\r\nab")
    exchange = talk(session, "DATA")
    assert exchange.lines == ["503 5.5.1 DATA and BDAT cannot be mixed"]
    assert state_of(session) is State.BDAT


@pytest.mark.parametrize("command", ["BDAT", "BDAT x", "BDAT 5 FIRST", "BDAT -1", "BDAT 1.5"])
def test_bad_bdat_syntax(command: str) -> None:
    session = rcpt()
    exchange = talk(session, command)
    assert exchange.lines == ["501 5.5.4 Syntax error in parameters or arguments"]
    assert state_of(session) is State.RCPT


def test_bad_bdat_syntax_out_of_sequence() -> None:
    session = ready()
    assert talk(session, "BDAT x").codes == ["501 5.5.4"]


@pytest.mark.parametrize(
    ("content", "line"),
    [
        (b"a\nb\r\n", "550 5.6.0 Message contains bare CR or LF, use CRLF"),
        (b"a\rb\r\n", "550 5.6.0 Message contains bare CR or LF, use CRLF"),
        (b"a" * 999 + b"\r\n", "550 5.6.0 Message contains a line longer than 998 octets"),
        (b"hi\r", "550 5.6.0 Message contains bare CR or LF, use CRLF"),
        (b"hi", "550 5.6.0 Message must end with CRLF"),
        (b"a\r\nb", "550 5.6.0 Message must end with CRLF"),
    ],
)
def test_bdat_content_problems(content: bytes, line: str) -> None:
    session = rcpt()
    exchange = feed(session, b"BDAT %d LAST\r\n" % len(content) + content)
    assert exchange.lines == [line]
    assert exchange.events == []
    assert state_of(session) is State.READY


@pytest.mark.parametrize(
    "chunks",
    [
        [b"BDAT 2 LAST\r\nhi"],
        [b"BDAT 4\r\nhi\r\n", b"BDAT 2 LAST\r\nyo"],
        [b"BDAT 2\r\nhi", b"BDAT 0 LAST\r\n"],
        [b"BDAT 1000 LAST\r\n", b"x" * 996 + b"\r\n", b"ab"],
    ],
    ids=["one-chunk", "last-chunk", "zero-last", "in-pieces"],
)
def test_bdat_message_ending_mid_line_refused(chunks: list[bytes]) -> None:
    session = rcpt()
    exchange = feed(session, *chunks, b"NOOP\r\n")
    assert exchange.lines[-2:] == ["550 5.6.0 Message must end with CRLF", "250 2.0.0 OK"]
    assert exchange.events == []
    assert state_of(session) is State.READY
    assert session.errors == 1
    # The transaction is over: the refused chunks never join a later message.
    talk(session, "MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.net>")
    exchange = feed(session, b"BDAT 4 LAST\r\nok\r\n")
    assert exchange.events == [MessageReceived(ALICE, (BOB,), "7BIT", False, b"ok\r\n")]


def test_bdat_final_crlf_may_straddle_chunks() -> None:
    session = rcpt()
    exchange = feed(session, b"BDAT 3\r\nhi\rBDAT 1 LAST\r\n\n")
    assert exchange.events == [MessageReceived(ALICE, (BOB,), "7BIT", False, b"hi\r\n")]


def test_bdat_empty_message_needs_no_final_crlf() -> None:
    session = rcpt()
    exchange = feed(session, b"BDAT 0\r\nBDAT 0 LAST\r\n")
    assert exchange.lines == ["250 2.0.0 0 octets received", "250 2.0.0 queued as Q1"]
    assert exchange.events == [MessageReceived(ALICE, (BOB,), "7BIT", False, b"")]


def test_bdat_message_refused_by_the_application() -> None:
    session = rcpt()
    exchange = feed(session, b"BDAT 4 LAST\r\nhi\r\n", answer=answer_with(replies.LOCAL_ERROR))
    assert exchange.codes == ["451 4.3.0"]
    assert state_of(session) is State.READY


# --- the other commands ---


def test_rset() -> None:
    session = rcpt()
    assert talk(session, "RSET").lines == ["250 2.0.0 Reset OK"]
    assert state_of(session) is State.READY
    assert session.authenticated == "alice"
    assert talk(session, "RCPT TO:<bob@example.net>").codes == ["503 5.5.1"]


def test_rset_in_bdat_drops_the_chunks() -> None:
    session = rcpt()
    feed(session, b"BDAT 3\r\nabc")
    talk(session, "RSET", "MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.net>")
    exchange = feed(session, b"BDAT 4 LAST\r\nde\r\n")
    assert isinstance(message := exchange.events[0], MessageReceived)
    assert message.content == b"de\r\n"


def test_rset_with_argument() -> None:
    session = rcpt()
    assert talk(session, "RSET all").codes == ["501 5.5.4"]
    assert state_of(session) is State.RCPT


def test_noop_help() -> None:
    session = start()
    exchange = talk(session, "NOOP whatever", "HELP", "HELP MAIL")
    assert exchange.lines == [
        "250 2.0.0 OK",
        "214 2.0.0 See RFC 5321 and RFC 6409",
        "214 2.0.0 See RFC 5321 and RFC 6409",
    ]


@pytest.mark.parametrize("who", ["alice", "alice@example.org", "nosuchuser", "<bob@example.net>"])
def test_vrfy_never_reveals_users(who: str) -> None:
    session = ready()
    exchange = talk(session, f"VRFY {who}")
    assert exchange.lines == ["252 2.0.0 Cannot VRFY user, but will accept message for delivery"]
    assert who.encode() not in exchange.output


def test_vrfy_without_argument() -> None:
    assert talk(ready(), "VRFY").codes == ["501 5.5.4"]


def test_expn_and_unknown_commands() -> None:
    exchange = talk(ready(), "EXPN staff", "XYZZY", "TURN")
    assert exchange.lines == [
        "502 5.5.1 Command not implemented",
        "500 5.5.2 Command unrecognized",
        "500 5.5.2 Command unrecognized",
    ]


def test_quit_closes_and_ignores_what_follows() -> None:
    session = ready()
    exchange = talk(session, "QUIT", "NOOP")
    assert exchange.lines == ["221 2.0.0 Bye"]
    assert session.closed
    assert state_of(session) is State.CLOSED
    session.receive_data(b"NOOP\r\n")
    assert isinstance(session.next_event(), NeedData)
    assert session.data_to_send() == b""


# --- command-line framing ---


@pytest.mark.parametrize(
    "raw", [b"NOOP\n", b"NO\rOP\r\n", b"NOOP\r\r\n", b"\n", b"NOOP\rQUIT\r\n", b"QUIT\n"]
)
def test_bare_cr_or_lf_in_command_lines(raw: bytes) -> None:
    session = ready()
    exchange = feed(session, raw, b"NOOP\r\n")
    assert exchange.lines == ["500 5.5.2 Bare CR or LF not allowed, use CRLF", "250 2.0.0 OK"]
    assert not session.closed


@pytest.mark.parametrize(
    ("raw", "line"),
    [
        (b"\r\n", "500 5.5.2 Command unrecognized"),
        (b"VRFY \xff\r\n", "500 5.5.2 Command contains invalid characters"),
        (b"VRFY a\x00b\r\n", "500 5.5.2 Command contains invalid characters"),
        (b"ABCDEFGHIJKLMNOPQ\r\n", "500 5.5.2 Command unrecognized"),
    ],
)
def test_malformed_command_lines(raw: bytes, line: str) -> None:
    session = ready()
    assert feed(session, raw).lines == [line]


def _padded(prefix: str, length: int) -> bytes:
    """A command line of exactly `length` octets, CRLF included."""
    return prefix.encode() + b"x" * (length - len(prefix) - 2) + b"\r\n"


@pytest.mark.parametrize(
    ("prefix", "limit"), [("NOOP ", 512), ("MAIL FROM:<alice@example.org> AUTH=", 1192)]
)
def test_command_line_limits(prefix: str, limit: int) -> None:
    session = ready()
    assert feed(session, _padded(prefix, limit)).codes[0].startswith("250")
    talk(session, "RSET")
    exchange = feed(session, _padded(prefix, limit + 1), b"NOOP\r\n")
    assert exchange.lines == ["500 5.5.2 Line too long", "250 2.0.0 OK"]
    assert exchange.events == []


def test_over_long_line_in_pieces_is_dropped_and_the_session_survives() -> None:
    session = ready()
    line = b"NOOP " + b"x" * 20000
    exchange = feed(session, line[:5000], line[5000:15000], line[15000:], b"\r\nNOOP\r\n")
    assert exchange.lines == ["500 5.5.2 Line too long", "250 2.0.0 OK"]
    assert session.errors == 1


def test_over_long_line_in_one_read() -> None:
    session = ready()
    exchange = feed(session, b"NOOP " + b"x" * 20000 + b"\r\nNOOP\r\n")
    assert exchange.lines == ["500 5.5.2 Line too long", "250 2.0.0 OK"]


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"NOOP " + b"x" * 13000, "500 5.5.2 Line too long"),
        (b"X" * 13000, "500 5.5.2 Line too long"),
        (b"NOOP\r" + b"x" * 13000, "500 5.5.2 Line too long"),
        (b"VRFY \xff" + b"x" * 13000, "500 5.5.2 Line too long"),
        # The line buffer holds 12288 octets before the LF: one more and the line is dropped.
        (b"X" * 12287, "500 5.5.2 Command unrecognized"),
        (b"X" * 12288, "500 5.5.2 Line too long"),
    ],
)
def test_over_long_line_reply_does_not_depend_on_chunking(line: bytes, reply: str) -> None:
    # The replies must not depend on how the bytes were split into reads.
    whole = feed(ready(), line + b"\r\nNOOP\r\n")
    pieces = feed(ready(), line[:7000], line[7000:], b"\r\nNOOP\r\n")
    assert whole.lines == [reply, "250 2.0.0 OK"]
    assert pieces == whole


# --- error counting ---


def test_too_many_errors_closes_with_421() -> None:
    session = ready(SessionSettings(HOST, max_errors=3))
    exchange = feed(session, b"XYZZY\r\n" * 3 + b"NOOP\r\n")
    assert exchange.lines == [
        "500 5.5.2 Command unrecognized",
        "500 5.5.2 Command unrecognized",
        "500 5.5.2 Command unrecognized",
        "421 4.7.0 Too many errors, closing connection",
    ]
    assert session.closed
    assert session.errors == 3


def test_errors_below_the_limit_keep_the_session() -> None:
    session = ready()
    exchange = feed(session, b"XYZZY\r\n" * 9 + b"NOOP\r\n")
    assert exchange.codes == ["500 5.5.2"] * 9 + ["250 2.0.0"]
    assert not session.closed
    assert talk(session, "XYZZY").codes == ["500 5.5.2", "421 4.7.0"]
    assert session.closed


def test_temporary_failures_do_not_count() -> None:
    session = rcpt(SessionSettings(HOST, max_errors=2, max_recipients=1))
    exchange = talk(session, *["RCPT TO:<c@example.net>"] * 3)
    assert exchange.codes == ["452 4.5.3"] * 3
    assert not session.closed
    assert session.errors == 0


def test_refusals_by_the_application_count() -> None:
    session = ready(SessionSettings(HOST, max_errors=2), login=False)
    refuse = answer_with(replies.AUTH_FAILED)
    exchange = talk(session, f"AUTH PLAIN {plain()}", f"AUTH PLAIN {plain()}", answer=refuse)
    assert exchange.codes == ["535 5.7.8", "535 5.7.8", "421 4.7.0"]
    assert session.closed


def test_a_421_answer_closes() -> None:
    session = ready()
    exchange = talk(
        session,
        "MAIL FROM:<alice@example.org>",
        "RCPT TO:<bob@example.net>",
        answer=answer_with(replies.SHUTTING_DOWN),
    )
    assert exchange.lines == ["421 4.3.2 Service shutting down, try again later"]
    assert exchange.event_names == ["MailFrom"]
    assert session.closed


# --- negative answers keep the right state ---


def _ready_plain() -> Session:
    return ready(tls=False, login=False)


def _ready_tls() -> Session:
    return ready(login=False)


def _mail() -> Session:
    return mail()


def _rcpt() -> Session:
    return rcpt()


@pytest.mark.parametrize(
    ("setup", "raw", "refusal", "state"),
    [
        (_ready_plain, b"STARTTLS\r\n", replies.TLS_NOT_AVAILABLE, State.READY),
        (_ready_tls, f"AUTH PLAIN {plain()}\r\n".encode(), replies.AUTH_FAILED, State.READY),
        (_ready_tls, b"AUTH LOGIN\r\nYWxpY2U=\r\ncHc=\r\n", replies.AUTH_FAILED, State.READY),
        (_mail, b"RCPT TO:<bob@example.net>\r\n", Reply(550, "5.1.1", "No such user"), State.MAIL),
        (_rcpt, b"RCPT TO:<c@example.net>\r\n", Reply(450, "4.2.1", "Try later"), State.RCPT),
        (_rcpt, b"DATA\r\nhi\r\n.\r\n", replies.LOCAL_ERROR, State.READY),
        (_rcpt, b"BDAT 4 LAST\r\nhi\r\n", replies.STORAGE_FULL, State.READY),
    ],
)
def test_negative_answers(setup: Setup, raw: bytes, refusal: Reply, state: State) -> None:
    session = setup()
    exchange = feed(session, raw, answer=answer_with(refusal))
    assert exchange.lines[-1] == refusal.encode().decode().rstrip("\r\n")
    assert len(exchange.events) == 1
    assert state_of(session) is state
    assert busy_of(session) is (state in (State.MAIL, State.RCPT))


def test_refused_sender_leaves_no_transaction() -> None:
    session = ready()
    exchange = talk(
        session, "MAIL FROM:<carol@example.org>", answer=answer_with(replies.SENDER_NOT_OWNED)
    )
    assert exchange.lines == ["553 5.7.1 Sender address not owned by authenticated user"]
    assert state_of(session) is State.READY
    assert talk(session, "RCPT TO:<bob@example.net>").codes == ["503 5.5.1"]


# --- API misuse ---


def test_next_event_with_a_pending_event_is_misuse() -> None:
    session = ready()
    session.receive_data(b"MAIL FROM:<alice@example.org>\r\n")
    assert isinstance(session.next_event(), MailFrom)
    assert session.busy
    with pytest.raises(ProtocolUsageError):
        session.next_event()
    session.answer(replies.SENDER_OK)
    assert isinstance(session.next_event(), NeedData)


def test_answer_without_an_event_is_misuse() -> None:
    session = ready()
    with pytest.raises(ProtocolUsageError):
        session.answer(replies.OK)
    session.receive_data(b"MAIL FROM:<alice@example.org>\r\n")
    session.next_event()
    session.answer(replies.SENDER_OK)
    with pytest.raises(ProtocolUsageError):
        session.answer(replies.SENDER_OK)


def test_protocol_usage_error_is_not_a_user_error() -> None:
    assert issubclass(ProtocolUsageError, RuntimeError)


# --- secrets stay out of reprs ---


@pytest.mark.parametrize(
    "lines",
    [[f"AUTH PLAIN {plain()}"], ["AUTH LOGIN", b64("alice"), b64(PASSWORD)]],
)
def test_auth_attempt_repr_hides_the_password(lines: list[str]) -> None:
    session = ready(login=False)
    (event,) = talk(session, *lines).events
    assert isinstance(event, AuthAttempt)
    assert event.password == PASSWORD
    for text in (repr(event), str(event), f"{event!r}"):
        assert PASSWORD not in text
        assert "hunter2" not in text
        assert "alice" in text


def test_message_received_repr_hides_the_content() -> None:
    session = in_data()
    (event,) = feed(session, b"Subject: TOP SECRET\r\n\r\nlaunch codes 0000\r\n.\r\n").events
    assert isinstance(event, MessageReceived)
    assert b"launch codes" in event.content
    for text in (repr(event), str(event)):
        assert "TOP SECRET" not in text
        assert "launch codes" not in text
        assert "bob" in text


def test_oversize_data_split_before_the_final_crlf_is_refused() -> None:
    session = in_data(SessionSettings(HOST, max_message_size=10))
    big = b"a" * (10 + 64 * 1024 - 5 - 2) + b"\r\n."
    exchange = feed(session, b"hello", big, b"\r\n")
    assert exchange.events == []
    assert exchange.codes == ["552 5.3.4"]


# --- EOF and close() ---


def _in_auth() -> Session:
    session = ready(login=False)
    assert talk(session, "AUTH LOGIN").codes == ["334"]
    return session


def _in_tls_wait() -> Session:
    session = ready(tls=False, login=False)
    assert talk(session, "STARTTLS").codes == ["220 2.0.0"]
    return session


@pytest.mark.parametrize(
    "setup",
    [start, ready, rcpt, in_data, _in_auth],
    ids=["init", "ready", "rcpt", "data", "auth"],
)
def test_eof_with_nothing_buffered_closes(setup: Setup) -> None:
    session = setup()
    session.receive_data(b"")
    # Closing waits for next_event(): commands received before the EOF come first.
    assert not closed_of(session)
    assert eof(session) == Exchange(b"", [])
    assert session.closed
    assert not busy_of(session)


def test_eof_in_tls_wait_closes_at_once() -> None:
    session = _in_tls_wait()
    session.receive_data(b"")
    assert session.closed
    assert drain(session) == Exchange(b"", [])
    with pytest.raises(ProtocolUsageError):
        session.tls_established(TLS)


def test_pipelined_commands_and_eof_in_one_go_are_all_answered() -> None:
    session = ready()
    session.receive_data(b"NOOP\r\nQUIT\r\n")
    session.receive_data(b"")
    assert not closed_of(session)
    exchange = drain(session)
    assert exchange.lines == ["250 2.0.0 OK", "221 2.0.0 Bye"]
    assert session.closed


def test_eof_without_quit_closes_after_the_answers() -> None:
    session = ready()
    session.receive_data(b"NOOP\r\nHELP\r\n")
    exchange = eof(session)
    assert exchange.codes == ["250 2.0.0", "214 2.0.0"]
    assert session.closed


@pytest.mark.parametrize(
    "body",
    [b"DATA\r\nhi\r\n.\r\n", b"BDAT 4 LAST\r\nhi\r\n"],
    ids=["data", "bdat"],
)
def test_transaction_pipelined_before_eof_is_delivered(body: bytes) -> None:
    session = ready()
    session.receive_data(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n" + body)
    exchange = eof(session)
    assert exchange.events == [
        MailFrom(ALICE, None, "7BIT", False),
        RcptTo(BOB),
        MessageReceived(ALICE, (BOB,), "7BIT", False, b"hi\r\n"),
    ]
    assert exchange.lines[-1] == "250 2.0.0 queued as Q1"
    assert session.closed


@pytest.mark.parametrize(
    ("setup", "raw", "lines"),
    [
        (ready, b"NOOP\r\nNOO", ["250 2.0.0 OK"]),
        (ready, b"NOOP\r\nNOOP\r", ["250 2.0.0 OK"]),
        (ready, b"NOOP\r\nNOOP " + b"x" * 13000, ["250 2.0.0 OK"]),  # dropped as too long
        (_in_auth, b"YWxpY2U=", []),
        (in_data, b"hi\r\n.\r", []),
        (rcpt, b"BDAT 10 LAST\r\nhi\r\n", []),
    ],
    ids=["line", "line-cr", "long-line", "auth", "data", "bdat"],
)
def test_incomplete_input_at_eof_is_dropped_without_reply(
    setup: Setup, raw: bytes, lines: list[str]
) -> None:
    session = setup()
    session.receive_data(raw)
    exchange = eof(session)
    assert exchange.lines == lines
    assert exchange.events == []
    assert session.closed
    assert session.data_to_send() == b""


def _pending_at_eof(setup: Setup, raw: bytes) -> Session:
    """A Session with an unanswered event, after EOF arrived."""
    session = setup()
    session.receive_data(raw)
    assert not isinstance(session.next_event(), NeedData)
    session.data_to_send()
    session.receive_data(b"")
    assert not closed_of(session)
    return session


@pytest.mark.parametrize(
    ("setup", "raw", "reply"),
    [
        (_ready_tls, f"AUTH PLAIN {plain()}\r\n".encode(), replies.AUTH_OK),
        (ready, b"MAIL FROM:<>\r\n", replies.SENDER_OK),
        (ready, b"MAIL FROM:<>\r\n", replies.SENDER_NOT_OWNED),
        (_mail, b"RCPT TO:<bob@example.net>\r\n", replies.RECIPIENT_OK),
        (_rcpt, b"DATA\r\nhi\r\n.\r\n", QUEUED),
        (_rcpt, b"BDAT 4 LAST\r\nhi\r\n", replies.LOCAL_ERROR),
        (_ready_plain, b"STARTTLS\r\n", replies.TLS_NOT_AVAILABLE),
    ],
    ids=["auth", "mail", "mail-refused", "rcpt", "data", "bdat-refused", "starttls-refused"],
)
def test_decision_answered_after_eof_is_still_sent(setup: Setup, raw: bytes, reply: Reply) -> None:
    session = _pending_at_eof(setup, raw)
    session.answer(reply)
    assert session.data_to_send() == reply.encode()
    assert drain(session) == Exchange(b"", [])
    assert session.closed


def test_commands_after_a_pending_decision_are_answered_after_eof() -> None:
    session = ready()
    session.receive_data(
        b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nNOOP\r\nNO"
    )
    assert isinstance(session.next_event(), MailFrom)
    session.receive_data(b"")
    session.answer(replies.SENDER_OK)
    exchange = drain(session)
    assert exchange.events == [RcptTo(BOB)]
    assert exchange.codes == ["250 2.1.0", "250 2.1.5", "250 2.0.0"]
    assert session.closed


def test_closing_answer_after_eof_closes() -> None:
    session = _pending_at_eof(ready, b"MAIL FROM:<>\r\nNOOP\r\n")
    session.answer(replies.SHUTTING_DOWN)
    assert session.closed
    assert drain(session) == Exchange(replies.SHUTTING_DOWN.encode(), [])


@pytest.mark.parametrize(
    "setup",
    [start, ready, rcpt, in_data, _in_auth, _in_tls_wait],
    ids=["init", "ready", "rcpt", "data", "auth", "tls-wait"],
)
def test_close_ends_the_session_at_once(setup: Setup) -> None:
    session = setup()
    session.receive_data(b"NOOP\r\n")
    session.close()
    assert session.closed
    assert not busy_of(session)
    # What was received but not yet processed is never answered, nor what comes later.
    assert drain(session) == Exchange(b"", [])
    session.receive_data(b"NOOP\r\n")
    session.receive_data(b"")
    assert drain(session) == Exchange(b"", [])


def test_close_keeps_replies_already_produced() -> None:
    session = ready()
    session.receive_data(b"NOOP\r\n")
    assert isinstance(session.next_event(), NeedData)
    session.close()
    assert session.data_to_send() == b"250 2.0.0 OK\r\n"


@pytest.mark.parametrize(
    ("setup", "raw", "reply"),
    [
        (_ready_plain, b"STARTTLS\r\n", replies.READY_TLS),
        (ready, b"MAIL FROM:<>\r\nNOOP\r\n", replies.SENDER_OK),
        (_rcpt, b"DATA\r\nhi\r\n.\r\n", QUEUED),
    ],
    ids=["starttls", "mail", "data"],
)
def test_close_while_a_decision_is_pending(setup: Setup, raw: bytes, reply: Reply) -> None:
    session = setup()
    session.receive_data(raw)
    assert not isinstance(session.next_event(), NeedData)
    session.data_to_send()
    session.close()
    assert session.closed
    assert busy_of(session)  # the application still owes its answer
    with pytest.raises(ProtocolUsageError):
        session.next_event()
    session.answer(reply)
    assert not busy_of(session)
    assert state_of(session) is State.CLOSED
    assert session.data_to_send() == b""
    assert drain(session) == Exchange(b"", [])


# --- regressions: EOF after STARTTLS, the size-limit slack boundary ---


def test_starttls_accepted_after_eof_closes() -> None:
    session = _pending_at_eof(_ready_plain, b"STARTTLS\r\nNOOP\r\n")
    session.answer(replies.READY_TLS)
    assert session.data_to_send() == replies.READY_TLS.encode()
    assert session.discarded_plaintext == 6
    assert drain(session) == Exchange(b"", [])
    assert session.closed


def test_data_at_the_slack_boundary_does_not_depend_on_chunking() -> None:
    slack = 64 * 1024
    # max_size + slack octets on the wire, max_size after unstuffing.
    raw = b"..\r\n" * slack + b".\r\n"
    cut = len(raw) - 2
    whole = feed(in_data(SessionSettings(HOST, max_message_size=3 * slack)), raw)
    assert whole.codes == ["250 2.0.0"]
    pieces = feed(in_data(SessionSettings(HOST, max_message_size=3 * slack)), raw[:cut], raw[cut:])
    assert pieces == whole


# --- refusals(): what the Session refused on its own, for the connection log ---


def test_refusals_lists_only_the_sessions_own_negative_replies() -> None:
    session = Session(SessionSettings(HOST, max_errors=3))
    session.receive_data(b"BOGUS\r\nEHLO client.example\r\nMAIL FROM:<bob@example.org>\r\n")
    event = session.next_event()
    assert event is NEED_DATA  # MAIL before AUTH is refused by the Session itself
    assert session.refusals() == [replies.UNRECOGNIZED, replies.MUST_STARTTLS]
    assert session.refusals() == []  # drained


def test_refusals_leave_out_the_applications_answers_and_include_the_421() -> None:
    session = ready()
    session.receive_data(b"MAIL FROM:<bob@example.org>\r\n")
    assert isinstance(session.next_event(), MailFrom)
    session.answer(replies.SENDER_NOT_OWNED)
    assert session.refusals() == []
    session = Session(SessionSettings(HOST, max_errors=1))
    session.receive_data(b"BOGUS\r\n")
    assert session.next_event() is NEED_DATA
    assert session.refusals() == [replies.UNRECOGNIZED, replies.TOO_MANY_ERRORS]


def test_every_verb_of_the_transition_table_has_its_handler() -> None:
    table = session_module._COMMANDS
    assert set(table) == set(session_module._ALLOWED)
    for verb, handler in table.items():
        assert handler.__name__ == "_cmd_" + verb.lower()


# --- progress: what the shell's command timeout measures ---


def test_progress_counts_complete_lines_not_bytes() -> None:
    session = start()
    before = session.progress
    for byte in b"NOOP":
        feed(session, bytes([byte]))
        assert session.progress == before  # a trickle without an end of line is no progress
    feed(session, b"\r\n")
    assert session.progress == before + 1
    feed(session, b"BOGUS\r\nNOOP\r\n")
    assert session.progress == before + 3  # refused lines count: the client did finish them


def test_an_endless_line_makes_no_progress() -> None:
    session = start()
    before = session.progress
    for _ in range(10):
        feed(session, b"x" * 1000)
    assert session.progress == before


def test_progress_counts_message_content_in_steps() -> None:
    step = session_module.CONTENT_STEP
    session = in_data()
    before = session.progress
    line = b"y" * 98 + b"\r\n"
    feed(session, line * (step // len(line)))  # just under one step
    assert session.progress == before
    feed(session, line)
    assert session.progress == before + 1
    assert feed(session, b".\r\n").codes == ["250 2.0.0"]


def test_progress_counts_bdat_content_in_steps() -> None:
    step = session_module.CONTENT_STEP
    session = rcpt()
    assert feed(session, f"BDAT {2 * step}\r\n".encode()).output == b""
    before = session.progress
    feed(session, b"z" * (step - 1))
    assert session.progress == before
    feed(session, b"z" * step)
    assert session.progress == before + 1
    assert feed(session, b"z").codes == ["250 2.0.0"]  # the chunk is complete


# --- output_full: replies nobody reads do not pile up ---


def test_input_waits_while_replies_are_unsent() -> None:
    session = ready()
    count = 20000  # 280 kB of replies to 120 kB of commands
    session.receive_data(b"NOOP\r\n" * count)
    assert session.next_event() is NEED_DATA
    full = session.output_full
    first = session.data_to_send()
    assert (full, session.output_full) == (True, False)  # input waited for the output to go
    reply = replies.OK.encode()
    assert session_module.OUTPUT_MAX <= len(first) < session_module.OUTPUT_MAX + len(reply)
    answered = first.count(reply)
    while session.next_event() is NEED_DATA and session.output_full:
        answered += session.data_to_send().count(reply)
    answered += session.data_to_send().count(reply)
    assert answered == count
    assert not session.output_full


# --- content_held and drop_content: the shell's memory budget ---


def test_content_held_counts_data_until_the_message_is_answered() -> None:
    session = in_data()
    assert session.content_held == 0
    session.receive_data(b"Subject: x\r\n\r\n" + b"y" * 900 + b"\r\n")
    assert session.next_event() is NEED_DATA
    assert session.content_held >= 900
    session.receive_data(b".\r\n")
    event = session.next_event()
    assert isinstance(event, MessageReceived)
    assert session.content_held == event.size  # handed over, still in memory
    session.answer(QUEUED)
    assert session.content_held == 0


def test_dropped_data_is_refused_at_its_end_and_the_session_goes_on() -> None:
    session = in_data()
    feed(session, b"Subject: x\r\n\r\n" + b"y" * 900 + b"\r\n")
    session.drop_content()
    assert session.content_held == 0
    exchange = feed(session, b"more\r\n" * 100, b".\r\n")
    assert exchange.events == []
    assert exchange.finals == ["452 4.3.1 Insufficient system storage, try again later"]
    assert session.content_held == 0
    assert talk(session, "MAIL FROM:<alice@example.org>").codes == ["250 2.1.0"]


def test_a_bdat_chunk_dropped_midway_is_refused_and_the_transaction_reset() -> None:
    session = rcpt()
    feed(session, b"BDAT 2000 LAST\r\n" + b"z" * 500)
    assert session.content_held == 500
    session.drop_content()
    assert session.content_held == 0
    exchange = feed(session, b"z" * 1500)
    assert exchange.events == []
    assert exchange.codes == ["452 4.3.1"]
    assert talk(session, "RCPT TO:<bob@example.net>").codes == ["503 5.5.1"]  # reset


def test_a_bdat_message_dropped_between_chunks_refuses_the_next_chunk() -> None:
    session = rcpt()
    assert feed(session, b"BDAT 4\r\nabcd").codes == ["250 2.0.0"]
    assert session.content_held == 4
    session.drop_content()
    exchange = feed(session, b"BDAT 3 LAST\r\nefg")
    assert exchange.events == []
    assert exchange.codes == ["452 4.3.1"]
    assert talk(session, "MAIL FROM:<alice@example.org>").codes == ["250 2.1.0"]


def test_drop_content_outside_a_message_changes_nothing() -> None:
    session = rcpt()
    session.drop_content()
    assert talk(session, "DATA").codes == ["354"]
    assert feed(session, b"Subject: x\r\n\r\nok\r\n.\r\n").codes == ["250 2.0.0"]


# --- DSN (RFC 3461) and REQUIRETLS (RFC 8689) parameters ---


def test_dsn_parameters_travel_with_the_message() -> None:
    session = ready()
    exchange = talk(
        session,
        "MAIL FROM:<alice@example.org> RET=HDRS ENVID=QQ+2B1 REQUIRETLS",
        "RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.net",
        "RCPT TO:<carol@example.net>",
        "DATA",
        "hi",
        ".",
    )
    assert exchange.codes == ["250 2.1.0", "250 2.1.5", "250 2.1.5", "354", "250 2.0.0"]
    carol = Address("carol", "example.net")
    assert exchange.events == [
        MailFrom(ALICE, None, "7BIT", False, "HDRS", "QQ+1", True),
        RcptTo(BOB, RcptParameters(("SUCCESS", "FAILURE"), "rfc822;bob@example.net")),
        RcptTo(carol),
        MessageReceived(
            ALICE,
            (BOB, carol),
            "7BIT",
            False,
            b"hi\r\n",
            ret="HDRS",
            envid="QQ+1",
            requiretls=True,
            rcpt_params=(
                RcptParameters(("SUCCESS", "FAILURE"), "rfc822;bob@example.net"),
                RcptParameters(),
            ),
        ),
    ]


def test_a_refused_recipient_leaves_no_parameters_behind() -> None:
    session = mail()

    def refuse_bob(event: Event) -> Reply:
        if isinstance(event, RcptTo) and event.recipient == BOB:
            return Reply(550, "5.1.1", "No such user")
        return accept(event)

    exchange = talk(
        session,
        "RCPT TO:<bob@example.net> NOTIFY=NEVER",
        "RCPT TO:<carol@example.net> NOTIFY=DELAY",
        "DATA",
        "hi",
        ".",
        answer=refuse_bob,
    )
    assert exchange.codes == ["550 5.1.1", "250 2.1.5", "354", "250 2.0.0"]
    message = exchange.events[-1]
    assert isinstance(message, MessageReceived)
    assert message.recipients == (Address("carol", "example.net"),)
    assert message.rcpt_params == (RcptParameters(("DELAY",)),)


def test_requiretls_needs_a_tls_session() -> None:
    session = ready(SessionSettings(HOST, auth_without_tls=True), tls=False)
    exchange = talk(session, "MAIL FROM:<alice@example.org> REQUIRETLS")
    assert exchange.lines == ["530 5.7.10 REQUIRETLS is offered only over TLS"]
    assert state_of(session) is State.READY


def test_rcpt_parameters_need_ehlo() -> None:
    session = start(tls=True)
    assert talk(session, "HELO client.example", f"AUTH PLAIN {plain()}").codes == [
        "250",
        "235 2.7.0",
    ]
    assert talk(session, "MAIL FROM:<alice@example.org>").codes == ["250 2.1.0"]
    exchange = talk(session, "RCPT TO:<bob@example.net> NOTIFY=NEVER")
    assert exchange.lines == ["555 5.5.4 Parameter not recognized or not implemented"]
