"""MTA-STS policy text: the TXT record, the policy file, MX patterns and expiry (pure parsing)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.unit.delivery.mtasts_samples import RFC_POLICY

from sendgate.delivery.mtasts_policy import (
    MAX_AGE_LIMIT,
    MtaStsError,
    StsPolicy,
    parse_policy,
    parse_txt,
)

# -- parse_txt ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([b"v=STSv1; id=20160831085700Z;"], "20160831085700Z"),  # RFC 8461 section 3.1
        ([b"v=STSv1; id=20160831085700Z"], "20160831085700Z"),
        ([b"v=STSv1;id=abc"], "abc"),
        ([b"v=STSv1 ;\tid=abc ; ext-1=v.a:l/u+e;"], "abc"),
        ([b"v=spf1 -all", b"v=STSv1; id=abc"], "abc"),
        ([b"v=STSv1; id=" + b"a" * 32], "a" * 32),
    ],
)
def test_parse_txt_accepts(records: list[bytes], expected: str) -> None:
    assert parse_txt(records) == expected


@pytest.mark.parametrize(
    "records",
    [
        [],
        [b"v=spf1 -all"],
        [b"v=STSv1; id=one", b"v=STSv1; id=two"],  # more than one: no policy
        [b"v=STSv1"],
        [b"v=STSv1;"],
        [b"v=STSv1; ext=x"],  # no id
        [b"v=STSv1; id=" + b"a" * 33],
        [b"v=STSv1; id=ab-c"],
        [b"v=STSv1; id="],
        [b"v=STSv1; id=a; id=b"],
        [b"v=STSv1 id=abc"],
        [b"v=STSv1;; id=abc"],
        [b"v=STSv1; id=abc;;"],
        [b"v=STSv1; id abc"],
        [b"v=STSv1; ext=a=b; id=abc"],
        [b"v=STSv1; -ext=1; id=abc"],
        [b"v=STSv1; id=\xc3\xa9"],
        [b"v=STSv10; id=abc"],
        [b"v=stsv1; id=abc"],
    ],
)
def test_parse_txt_rejects(records: list[bytes]) -> None:
    assert parse_txt(records) is None


@given(st.lists(st.binary(max_size=80), max_size=4))
def test_parse_txt_never_raises(records: list[bytes]) -> None:
    result = parse_txt(records)
    assert result is None or (result.isalnum() and result.isascii() and len(result) <= 32)


@given(st.text(alphabet="v=STSv1; id=abcXYZ09-_.\t", max_size=40))
def test_parse_txt_near_misses_never_raise(text: str) -> None:
    result = parse_txt([text.encode()])
    assert result is None or text.startswith("v=STSv1")


# -- parse_policy ------------------------------------------------------------------------------


def test_parse_policy_rfc_example() -> None:
    policy = parse_policy(RFC_POLICY, policy_id="abc", fetched_at=100.0)
    assert policy == StsPolicy(
        mode="enforce",
        mx=("mail.example.com", "*.example.net", "backupmx.example.com"),
        max_age=604800,
        policy_id="abc",
        fetched_at=100.0,
    )


def test_parse_policy_lf_lines_case_and_no_final_newline() -> None:
    body = b"version: STSv1\nmode: testing\nmx: MX.Example.COM  \nmax_age:86400"
    policy = parse_policy(body, policy_id="x", fetched_at=0.0)
    assert (policy.mode, policy.mx, policy.max_age) == ("testing", ("mx.example.com",), 86400)


def test_parse_policy_mode_none_needs_no_mx() -> None:
    policy = parse_policy(b"version: STSv1\nmode: none\nmax_age: 0\n", policy_id="x", fetched_at=0)
    assert (policy.mode, policy.mx, policy.max_age) == ("none", (), 0)


def test_parse_policy_caps_max_age() -> None:
    body = b"version: STSv1\nmode: none\nmax_age: 9999999999\n"
    assert parse_policy(body, policy_id="x", fetched_at=0).max_age == MAX_AGE_LIMIT


def test_parse_policy_first_occurrence_wins_and_extensions_are_ignored() -> None:
    body = (
        b"version: STSv1\nmode: testing\nmode: enforce\nmx: a.example\n"
        b"max_age: 10\nmax_age: 20\nfuture_key.v2: some value with spaces\n\n"
    )
    policy = parse_policy(body, policy_id="x", fetched_at=0)
    assert (policy.mode, policy.max_age) == ("testing", 10)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"mode: enforce\nmx: a.example\nmax_age: 1\n", "no version"),
        (b"version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n", "version 'STSv2'"),
        (b"version: STSv1\nmx: a.example\nmax_age: 1\n", "no mode"),
        (b"version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 1\n", "unknown mode"),
        (b"version: STSv1\nmode: enforce\nmx: a.example\n", "no max_age"),
        (b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n", "max_age '-1'"),
        (b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1e3\n", "max_age"),
        (b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n", "max_age"),
        (b"version: STSv1\nmode: enforce\nmax_age: 1\n", "has no mx"),
        (b"version: STSv1\nmode: testing\nmax_age: 1\n", "has no mx"),
        (b"version: STSv1\nmode: enforce\nmx: a..example\nmax_age: 1\n", "bad mx pattern"),
        (b"version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 1\n", "bad mx pattern"),
        (b"version: STSv1\nmode: enforce\nmx: a.example.\nmax_age: 1\n", "bad mx pattern"),
        (b"version: STSv1\nmode: enforce\nmx: -a.example\nmax_age: 1\n", "bad mx pattern"),
        (b"version: STSv1\nmode: enforce\nmx: a_b.example\nmax_age: 1\n", "bad mx pattern"),
        (b"version: STSv1\nmode: enforce\nmx: 10.0.0.1:25\nmax_age: 1\n", "line 3"),
        (b"version: STSv1\nmode enforce\n", "line 2 is malformed"),
        (b" version: STSv1\n", "line 1 is malformed"),
        (b"max age: 1\n", "line 1 is malformed"),
        (b"version:\n", "line 1 is malformed"),
        (b"version: STS\x00v1\n", "line 1 is malformed"),
        (b"version: STSv1\rmode: none\n", "line 1 is malformed"),
        (b"version: STSv1\nnote: caf\xe9\n", "not UTF-8"),
    ],
)
def test_parse_policy_rejects(body: bytes, fragment: str) -> None:
    with pytest.raises(MtaStsError, match="MTA-STS policy") as info:
        parse_policy(body, policy_id="x", fetched_at=0)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message
    assert "\r" not in message
    assert "\x00" not in message


def test_parse_policy_error_shortens_long_values() -> None:
    with pytest.raises(MtaStsError) as info:
        parse_policy(b"version: " + b"x" * 5000 + b"\n", policy_id="x", fetched_at=0)
    assert len(str(info.value)) < 200


@given(st.binary(max_size=300))
def test_parse_policy_raises_only_its_error(body: bytes) -> None:
    try:
        policy = parse_policy(body, policy_id="x", fetched_at=0)
    except MtaStsError as exc:
        message = str(exc)
    else:
        assert policy.mode in ("enforce", "testing", "none")
        assert 0 <= policy.max_age <= MAX_AGE_LIMIT
        return
    assert message.startswith("MTA-STS policy")
    assert "\n" not in message


_LINES = st.sampled_from(
    [
        "version: STSv1",
        "mode: enforce",
        "mode: none",
        "mode: testing",
        "mx: a.example",
        "mx: *.b.example",
        "mx: *.",
        "max_age: 86400",
        "max_age: 0",
        "x: y",
        "",
        ":",
        "version : STSv1",
    ]
)


@given(st.lists(_LINES, max_size=8), st.sampled_from(["\n", "\r\n"]))
def test_parse_policy_line_mixes_raise_only_its_error(lines: list[str], end: str) -> None:
    body = end.join(lines).encode()
    try:
        policy = parse_policy(body, policy_id="x", fetched_at=0)
    except MtaStsError:
        return
    assert "version: STSv1" in lines
    assert policy.mode == "none" or policy.mx


# -- StsPolicy ---------------------------------------------------------------------------------


def _policy(*mx: str, max_age: int = 100, fetched_at: float = 1000.0) -> StsPolicy:
    return StsPolicy("enforce", mx, max_age, "id", fetched_at)


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("mail.example.com", True),
        ("MAIL.Example.COM.", True),
        ("a.example.net", True),  # "*." is exactly one label
        ("example.net", False),
        ("a.b.example.net", False),
        (".example.net", False),
        ("xexample.net", False),
        ("mail.example.com.evil", False),
        ("other.example.com", False),
        ("", False),
        (".", False),
    ],
)
def test_allows(host: str, allowed: bool) -> None:
    assert _policy("mail.example.com", "*.example.net").allows(host) is allowed


def test_expired_at_fetched_at_plus_max_age() -> None:
    policy = _policy("a.example", max_age=100, fetched_at=1000.0)
    assert not policy.expired(1099.9)
    assert policy.expired(1100.0)


# Found by fuzzing (tests/fuzz, target "mtasts"): the pattern was lower-cased before it was
# checked, and U+212A (KELVIN SIGN) lower-cases to an ASCII "k", so a non-ASCII name passed.
@pytest.mark.parametrize("value", ["mail.example.\u212acom", "*.\u212a.example", "\u0130x.example"])
def test_mx_pattern_is_checked_before_it_is_lower_cased(value: str) -> None:
    body = f"version: STSv1\r\nmode: enforce\r\nmx: {value}\r\nmax_age: 6\r\n".encode()
    with pytest.raises(MtaStsError, match="bad mx pattern"):
        parse_policy(body, policy_id="id", fetched_at=0.0)
