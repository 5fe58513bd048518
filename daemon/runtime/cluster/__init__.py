"""The daemon as one node of a cluster: several ``vigil run`` sharing one PostgreSQL.

Loaded only when the configuration has a ``[cluster]`` table (it imports psycopg).

* :mod:`.backend`: the node's PostgreSQL stores (event log, transcripts, leases,
  membership), the schema migrated at start.
* :mod:`.node`: joining (the jobs and key ids must match the live nodes'), the lease
  loop (renew every third of ``lease``; a lost conversation is stopped at once) and
  placement (rendezvous hashing over the live nodes; hand-over between turns).
* :mod:`.run`: the node's life, beside :class:`daemon.runtime.supervisor.Supervisor`'s
  single-node one.

The runtime parts (recovery, scheduling, dispatch, reload) are the single node's:
opening a conversation this node now owns is the recovery of that one conversation.
"""
