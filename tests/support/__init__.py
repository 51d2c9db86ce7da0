"""Shared test support: fake clock, SMTP session preamble, loopback server base, TLS contexts."""
