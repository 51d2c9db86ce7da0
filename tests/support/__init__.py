"""Shared test support: a fake clock, the in-memory SMTP session preamble, loopback servers."""
