"""End-to-end tests: the real daemon, the real SDK and bundled CLI, the loopback model."""
