"""Decisions about logins and senders: plain values in, a verdict out."""
