"""Shared test support: fake clock, SMTP session preamble, loopback server base, TLS contexts,
forked children for code that owns a process (`forked.Forked`)."""
