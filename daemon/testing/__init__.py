"""vigil's test kit, shipped with it (like ``claude_agent_sdk.testing``).

* :mod:`~daemon.testing.devmodel`: the loopback Messages API (``vigil dev-model``);
  :mod:`~daemon.testing.messages` plans its replies (pure), :mod:`~daemon.testing.wire`
  frames its HTTP;
* :mod:`~daemon.testing.harness`: the process harness (the loopback model, a site,
  ``vigil run`` processes) used by the tests, the benchmarks and ``vigil demo``;
  :mod:`~daemon.testing.process` and :mod:`~daemon.testing.proctree` beneath it;
* :mod:`~daemon.testing.conformance`: the behaviour suites of the ports, which every
  backend must pass; :mod:`~daemon.testing.memlog`: the in-memory event log;
* :mod:`~daemon.testing.fakes`: test doubles (a sink, a notifier).

Production code never imports this package (``lint-imports`` checks it), except the
CLI's ``dev-model`` and ``demo`` commands, which ship the loopback model on purpose.
"""
