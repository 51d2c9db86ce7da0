"""I/O shell: listeners, connections, admission, TLS contexts, timeouts, connection caps, workers.

No SMTP grammar lives here; bytes go to `sendgate.smtp.Session` and decisions to a handler.
"""
