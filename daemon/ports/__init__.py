"""The ports: small Protocols the runtime depends on, each with its contract.

An adapter (the file journal, the SDK driver, a PostgreSQL backend) is done when it
passes the behaviour suite for its port in :mod:`daemon.testing`, not when it has tests
of its own. Nothing here does I/O; nothing here imports an adapter.
"""
