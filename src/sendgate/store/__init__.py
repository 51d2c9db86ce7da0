"""Storage: the contracts every backend implements, the backends, and the one place picking them.

- users.py, queue.py, limits.py: the contracts (typing.Protocols) and their value types
  (envelope.py and delivery_state.py hold the queue's records). Callers import only these.
- local/: the embedded default for one node: SQLite (WAL) users and limits, the file spool.
- backends.py: `open_stores(config)` and `Backends`, the only code that chooses a backend and
  its paths. Nothing else imports a backend.
"""
