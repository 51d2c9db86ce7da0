"""The embedded backends for one node: SQLite users and limits, the durable file spool."""
