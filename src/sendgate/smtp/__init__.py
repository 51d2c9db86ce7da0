"""Sans-I/O SMTP server protocol: commands, addresses, replies, SASL, DATA decoding, Session.

Stdlib only; nothing here touches a socket, a file or a clock.
"""
