"""Tests for app password generation and lookups."""

import hashlib
import math
import re

from hypothesis import given
from hypothesis import strategies as st

from sendgate.policy.app_passwords import ALPHABET, generate, lookup_of


def test_generated_passwords_have_the_documented_shape_and_100_bits() -> None:
    password = generate()
    assert re.fullmatch(r"[a-z2-7]{5}-[a-z2-7]{5}-[a-z2-7]{5}-[a-z2-7]{5}", password)
    assert len(set(ALPHABET)) == 32
    assert 20 * math.log2(len(set(ALPHABET))) >= 100


def test_generated_passwords_differ_and_use_the_whole_alphabet() -> None:
    passwords = {generate() for _ in range(200)}
    assert len(passwords) == 200
    # 200 passwords hold 4000 characters: every one of the 32 shows up unless the source is bad
    # (the chance that a fair source misses one is below 32 * (31/32)**4000, about 1e-53).
    assert set("".join(passwords)) - {"-"} == set(ALPHABET)


def test_lookup_is_the_first_four_bytes_of_sha256_in_hex() -> None:
    assert lookup_of("abcde-fghij-klmno-pqrst") == (
        hashlib.sha256(b"abcde-fghij-klmno-pqrst").digest()[:4].hex()
    )


@given(st.text())
def test_lookup_of_any_text_is_eight_hex_digits(password: str) -> None:
    assert re.fullmatch(r"[0-9a-f]{8}", lookup_of(password))


def test_lookup_of_a_lone_surrogate_does_not_raise() -> None:
    assert len(lookup_of("lone \udc80")) == 8
