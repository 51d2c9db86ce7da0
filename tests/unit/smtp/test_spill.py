"""Tests for large messages streamed to a sink: the same verdict and bytes as in memory."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.session import HOST, TLS, plain, talk

from sendgate.smtp import replies
from sendgate.smtp.data import Content, ContentProblem, DataReader, check_content, dot_stuff
from sendgate.smtp.events import NEED_DATA, MessageReceived
from sendgate.smtp.session import Session, SessionSettings
from sendgate.smtp.spill import BLOCK, HEAD_MAX, SPILL_AT, ContentBuffer


class Sink:
    """A BodySink in memory that can be told to fail."""

    def __init__(self, fail_after: int | None = None, code: int = errno.ENOSPC) -> None:
        self.data = bytearray()
        self.writes = 0
        self.discarded = False
        self._fail_after = fail_after
        self._code = code

    def write(self, data: bytes) -> None:
        assert not self.discarded
        if self._fail_after is not None and self.writes >= self._fail_after:
            raise OSError(self._code, "injected")
        self.writes += 1
        self.data += data

    def discard(self) -> None:
        self.discarded = True


class Sinks:
    """A sink factory that remembers what it made (and can fail to make one)."""

    def __init__(self, fail_after: int | None = None, code: int = errno.ENOSPC) -> None:
        self.made: list[Sink] = []
        self.refuse: int | None = None
        self._fail_after = fail_after
        self._code = code

    def __call__(self) -> Sink:
        if self.refuse is not None:
            raise OSError(self.refuse, "injected")
        sink = Sink(self._fail_after, self._code)
        self.made.append(sink)
        return sink


def feed(reader: DataReader, raw: bytes, cuts: list[int]) -> Content:
    pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    for piece in pieces:
        used, content = reader.feed(piece)
        if content is not None:
            return content
        assert used == len(piece)
    raise AssertionError("no terminator")


def whole(content: Content, sinks: Sinks) -> bytes:
    """The message a spilled Content stands for: header section + what its sink got."""
    assert content.data is not None
    if content.body is None:
        return content.data
    assert isinstance(content.body, Sink)
    assert content.body in sinks.made
    assert not content.body.discarded
    return content.data + bytes(content.body.data)


def all_problems(data: bytes, max_size: int) -> set[ContentProblem]:
    """Every reason the oracle could give for refusing `data` (it reports only the first)."""
    found = set()
    crlf = data.count(b"\r\n")
    if len(data) > max_size:
        found.add(ContentProblem.TOO_BIG)
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        found.add(ContentProblem.BARE_NEWLINE)
    if any(len(line) > 998 for line in data.split(b"\r\n")):
        found.add(ContentProblem.LONG_LINE)
    return found


LINE = st.one_of(
    st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.sampled_from([b".", b"..", b".x", b"", b" \t ", b"a\rb", b"a\nb", b"x" * 999, b"y" * 998]),
)


@settings(max_examples=300, deadline=None)
@given(
    headers=st.lists(LINE, max_size=6),
    body=st.lists(LINE, max_size=60),
    spill_at=st.integers(min_value=1, max_value=300),
    max_size=st.sampled_from([200, 3000, 100_000]),
    data=st.data(),
)
def test_spilled_data_matches_the_in_memory_reader(
    headers: list[bytes],
    body: list[bytes],
    spill_at: int,
    max_size: int,
    data: st.DataObject,
) -> None:
    """Whatever the cut and the threshold, spilling refuses what memory refuses, and keeps
    the same bytes of what it accepts (header section in memory, body in the sink)."""
    lines = [*(b"H" + h for h in headers), b"", *body]
    message = b"".join(line + b"\r\n" for line in lines)
    raw = dot_stuff(message) + b".\r\n"
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=8)))
    oracle = feed(DataReader(max_size), raw, cuts)
    sinks = Sinks()
    spilled = feed(DataReader(max_size, sinks, spill_at=spill_at), raw, cuts)
    if oracle.problem is None:
        assert spilled.problem is None
        assert whole(spilled, sinks) == oracle.data == message
        assert spilled.size == len(message)
    else:
        assert spilled.data is None
        assert spilled.problem in all_problems(message, max_size) | {ContentProblem.TOO_BIG}
        assert all(sink.discarded for sink in sinks.made)


def big_message(body_lines: int = 9000, line: bytes = b"x" * 60) -> bytes:
    head = b"From: alice@example.org\r\nSubject: big\r\n\r\n"
    return head + (line + b"\r\n") * body_lines


def test_a_large_message_is_written_in_blocks_and_held_memory_stays_small() -> None:
    message = big_message(40_000)  # 2.5 MB
    sinks = Sinks()
    reader = DataReader(10 << 20, sinks)
    most = 0
    raw = dot_stuff(message) + b".\r\n"
    content = None
    for start in range(0, len(raw), 16_384):
        _, content = reader.feed(raw[start : start + 16_384])
        most = max(most, reader.held)
    assert content is not None
    assert content.body is not None
    assert whole(content, sinks) == message
    assert content.data == b"From: alice@example.org\r\nSubject: big\r\n\r\n"
    assert most <= SPILL_AT + BLOCK + 16_384
    assert len(sinks.made) == 1
    assert sinks.made[0].writes >= len(message) // (2 * BLOCK)


def in_reads(reader: DataReader, raw: bytes, size: int = 16_384) -> Content | None:
    """Feed `raw` in reads of `size` octets; the Content once the terminator came."""
    for start in range(0, len(raw), size):
        _, content = reader.feed(raw[start : start + size])
        if content is not None:
            return content
    return None


def test_a_long_partial_line_is_refused_without_being_held() -> None:
    sinks = Sinks()
    reader = DataReader(10 << 20, sinks, spill_at=1000)
    reader.feed(big_message(100))
    for _ in range(50):
        reader.feed(b"z" * 65_536)  # one line, never ended
        assert reader.held < 4096
    _, content = reader.feed(b"\r\n.\r\n")
    assert content is not None
    assert content.problem is ContentProblem.LONG_LINE
    assert sinks.made[0].discarded


def test_a_header_section_over_the_limit_is_refused() -> None:
    fields = b"X-Filler: " + b"f" * 900 + b"\r\n"
    message = fields * (HEAD_MAX // len(fields) + 2) + b"\r\nbody\r\n"
    sinks = Sinks()
    _, content = DataReader(10 << 20, sinks).feed(message + b".\r\n")
    assert content == Content(None, len(message), ContentProblem.HEADER_TOO_BIG)
    assert sinks.made == []  # the body's sink was never opened


def test_a_message_of_header_only_past_the_threshold_stays_whole() -> None:
    message = b"X-Filler: " + b"f" * 900 + b"\r\n"
    message *= SPILL_AT // len(message) + 5
    sinks = Sinks()
    _, content = DataReader(10 << 20, sinks).feed(message + b".\r\n")
    assert content == Content(message, len(message), None)
    assert sinks.made == []


@pytest.mark.parametrize(
    ("code", "problem"),
    [
        (errno.ENOSPC, ContentProblem.NO_SPACE),
        (errno.EDQUOT, ContentProblem.NO_SPACE),
        (errno.EIO, ContentProblem.WRITE_FAILED),
    ],
)
def test_a_failed_write_refuses_the_message_and_discards_the_sink(
    code: int, problem: ContentProblem
) -> None:
    sinks = Sinks(fail_after=2, code=code)
    message = big_message(40_000)
    content = in_reads(DataReader(10 << 20, sinks), message + b".\r\n")
    assert content == Content(None, len(message), problem)
    assert sinks.made[0].discarded
    assert sinks.made[0].writes == 2


def test_a_sink_that_cannot_be_opened_refuses_the_message() -> None:
    sinks = Sinks()
    sinks.refuse = errno.ENOSPC
    message = big_message(40_000)
    _, content = DataReader(10 << 20, sinks).feed(message + b".\r\n")
    assert content == Content(None, len(message), ContentProblem.NO_SPACE)


def test_a_spilled_message_over_the_size_limit_lets_go_of_its_sink_at_once() -> None:
    sinks = Sinks()
    reader = DataReader(1 << 20, sinks)
    in_reads(reader, big_message(20_000))  # 1.2 MB: over the limit before its end
    assert sinks.made[0].discarded
    assert reader.held < BLOCK + 4096
    _, content = reader.feed(b".\r\n")
    assert content is not None
    assert content.problem is ContentProblem.TOO_BIG


def test_drop_refuses_a_spilled_message_for_want_of_memory() -> None:
    sinks = Sinks()
    reader = DataReader(10 << 20, sinks)
    reader.feed(big_message(10_000))
    reader.drop()
    assert sinks.made[0].discarded
    assert reader.held == 0
    _, content = reader.feed(b"more\r\n.\r\n")
    assert content is not None
    assert content.problem is ContentProblem.NO_MEMORY


def test_bdat_content_is_not_unstuffed_and_may_lack_a_final_crlf() -> None:
    sinks = Sinks()
    buffer = ContentBuffer(10 << 20, stuffed=False, open_sink=sinks, spill_at=100)
    message = b"From: a@b.example\r\n\r\n" + b"..dots stay\r\n" * 50
    buffer.add(message)
    buffer.add(b"no final CRLF")
    content = buffer.finish_spilled()
    assert content.problem is ContentProblem.NO_FINAL_CRLF
    assert sinks.made[0].discarded
    buffer = ContentBuffer(10 << 20, stuffed=False, open_sink=(sinks := Sinks()), spill_at=100)
    buffer.add(message)
    content = buffer.finish_spilled()
    assert whole(content, sinks) == message


# --- through the Session ---


def test_session_hands_a_large_data_message_over_spilled() -> None:
    sinks = Sinks()
    session = accept_session(sinks)
    message = big_message(20_000)
    feed_all(session, b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
    session.receive_data(dot_stuff(message) + b".\r\n")
    event = session.next_event()
    assert isinstance(event, MessageReceived)
    assert event.spilled is sinks.made[0]
    assert event.size == len(message)
    assert event.content + bytes(sinks.made[0].data) == message
    assert session.content_held == len(event.content)  # only the header section in memory
    session.answer(replies.QUEUED)
    assert not sinks.made[0].discarded  # the handler owns it once handed over


def test_session_streams_bdat_chunks_to_the_sink() -> None:
    sinks = Sinks()
    session = accept_session(sinks)
    message = big_message(20_000)
    half = len(message) // 2
    feed_all(session, b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n")
    session.receive_data(b"BDAT %d\r\n" % half + message[:half])
    assert session.next_event() is not None
    assert session.content_held < SPILL_AT + 2 * BLOCK
    session.receive_data(b"BDAT %d LAST\r\n" % (len(message) - half) + message[half:])
    event = session.next_event()
    assert isinstance(event, MessageReceived)
    assert event.spilled is sinks.made[0]
    assert event.content + bytes(sinks.made[0].data) == message


@pytest.mark.parametrize("end", ["rset", "eof", "close", "errors"])
def test_session_discards_the_sink_of_an_unfinished_message(end: str) -> None:
    sinks = Sinks()
    session = accept_session(sinks)
    feed_all(session, b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n")
    message = big_message(8000)
    session.receive_data(b"BDAT %d\r\n" % len(message) + message)
    session.next_event()
    assert [sink.discarded for sink in sinks.made] == [False]
    if end == "close":
        session.close()
    else:
        session.receive_data({"rset": b"RSET\r\n", "eof": b"", "errors": b"\r\n" * 100}[end])
        session.next_event()
    assert [sink.discarded for sink in sinks.made] == [True]
    assert session.content_held == 0


def test_session_refuses_a_spilled_message_with_a_bare_newline() -> None:
    sinks = Sinks()
    session = accept_session(sinks)
    feed_all(session, b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
    raw = big_message(10_000) + b"bare\nLF\r\n.\r\n"
    for start in range(0, len(raw), 16_384):
        session.receive_data(raw[start : start + 16_384])
        session.next_event()
    assert session.data_to_send().endswith(replies.BARE_NEWLINE_IN_DATA.encode())
    assert sinks.made[0].discarded


def accept_session(sinks: Sinks) -> Session:
    """A logged-in Session over TLS whose large bodies go to `sinks`."""
    session = Session(SessionSettings(HOST, max_message_size=10 << 20), TLS, open_sink=sinks)
    session.data_to_send()
    assert talk(session, "EHLO client.example").codes == ["250"]
    assert talk(session, f"AUTH PLAIN {plain()}").codes == ["235 2.7.0"]
    return session


def feed_all(session: Session, data: bytes) -> None:
    """Give `data` as one read and accept the events it raises (MAIL, RCPT)."""
    session.receive_data(data)
    while (event := session.next_event()) is not NEED_DATA:
        assert not isinstance(event, MessageReceived)
        session.answer(replies.SENDER_OK)
    session.data_to_send()


def test_check_content_is_the_oracle_for_small_messages() -> None:
    data = b"a\r\n"
    assert check_content(data, 3, 10) == Content(data, 3, None)


def test_a_message_without_header_section_is_not_refused_as_a_long_header() -> None:
    message = b"\r\n" + (b"z" * 70 + b"\r\n") * 20_000  # 1.4 MB, starting with the empty line
    sinks = Sinks()
    _, content = DataReader(10 << 20, sinks).feed(message + b".\r\n")
    assert content is not None
    assert content.problem is None
    assert content.data == b"\r\n"
    assert whole(content, sinks) == message


def test_a_bdat_chunk_dropped_before_its_first_octet_is_refused() -> None:
    session = accept_session(Sinks())
    feed_all(session, b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 10 LAST\r\n")
    session.drop_content()  # no octet of the chunk has come yet
    session.receive_data(b"0123456789")
    assert session.next_event() is NEED_DATA
    assert session.data_to_send() == replies.STORAGE_FULL.encode()
