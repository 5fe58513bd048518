"""The cluster backends: several vigil nodes sharing one PostgreSQL.

* :mod:`daemon.cluster.db`: one connection of a component, DSN redaction, error mapping
* :mod:`daemon.cluster.schema`: vigil's schema and its migrations (a version table)
* :mod:`daemon.cluster.leases`: conversation leases with fencing epochs, node membership
* :mod:`daemon.cluster.placement`: which live node should own which conversation (pure)
* :mod:`daemon.cluster.eventlog`: the event-log port on PostgreSQL, fenced per append
* :mod:`daemon.cluster.transcripts`: the SDK's ``SessionStore`` on PostgreSQL, fenced

PostgreSQL only ever sees sealed records (the very lines the file journal writes) and
the ids needed to index them. Nothing in this ``__init__`` imports psycopg, and nothing
outside this package imports it: the single-node file daemon never loads it.
"""
