"""Text for people: escaping of untrusted text and time formatting (temporary home, see cli)."""

from datetime import UTC, datetime


def iso_utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def printable(text: str) -> str:
    """Escape characters a terminal would act on (controls, bidi overrides); keep tabs."""
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() or char == "\t" else char.encode("unicode_escape").decode()
        for char in text
    )
