"""Backends for several nodes: stores on services every node reaches (Redis, later PostgreSQL)."""
