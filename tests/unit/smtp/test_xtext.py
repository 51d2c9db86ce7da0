"""Tests for xtext (RFC 3461 section 4): strict decoding, and encoding that decodes back."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sendgate.smtp import xtext

ASCII = st.text(st.characters(min_codepoint=0, max_codepoint=127), min_size=1, max_size=200)


@pytest.mark.parametrize(
    ("text", "decoded"),
    [
        ("abc", "abc"),
        ("a+2Bb", "a+b"),
        ("a+3Db", "a=b"),
        ("+20", " "),
        ("id-1/2@host.example", "id-1/2@host.example"),
        ("+7E+00", "~\x00"),
    ],
)
def test_decode(text: str, decoded: str) -> None:
    assert xtext.decode(text) == decoded


@pytest.mark.parametrize(
    "text", ["", "a b", "a=b", "a+", "a+2", "a+2b", "a+G0", "+c3+a9", "\u00e9", "a+C3+A9", "\t"]
)
def test_decode_refuses(text: str) -> None:
    with pytest.raises(xtext.XtextError):
        xtext.decode(text)


@pytest.mark.parametrize(
    ("text", "encoded"),
    [("abc", "abc"), ("a+b", "a+2Bb"), ("a=b", "a+3Db"), ("a b", "a+20b"), ("\x7f", "+7F")],
)
def test_encode(text: str, encoded: str) -> None:
    assert xtext.encode(text) == encoded


@pytest.mark.parametrize("text", ["", "\u00e9"])
def test_encode_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="non-empty ASCII"):
        xtext.encode(text)


@given(ASCII)
def test_encoding_decodes_back_and_is_xtext(text: str) -> None:
    encoded = xtext.encode(text)
    assert xtext.XTEXT.fullmatch(encoded)
    assert xtext.decode(encoded) == text


@given(st.text(max_size=50))
def test_decode_either_refuses_or_gives_ascii_that_encodes_back(text: str) -> None:
    try:
        decoded = xtext.decode(text)
    except xtext.XtextError:
        return
    assert decoded.isascii()
    assert xtext.decode(xtext.encode(decoded)) == decoded
