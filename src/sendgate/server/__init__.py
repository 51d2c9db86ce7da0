"""I/O shell: listeners, connections, TLS contexts, time and connection limits, worker processes.

No SMTP grammar lives here; bytes go to `sendgate.smtp.Session` and decisions to a handler.
"""
