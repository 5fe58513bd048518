"""The ``[cluster]`` table: several vigil nodes sharing one PostgreSQL.

Without ``[cluster]`` vigil is the single-node file daemon; with it, the journals and
transcripts live in PostgreSQL and the conversations are spread over the live nodes.

* ``database``: the PostgreSQL URL (``postgresql://user@host:port/db``, or libpq's
  ``key=value`` form). When the table leaves it out, ``$VIGIL_DATABASE_URL`` gives it,
  else the systemd credential ``vigil.database`` (``$CREDENTIALS_DIRECTORY``). The URL
  may hold a password: it is kept as a secret (shown as ``**********``), and no error
  message here ever quotes it.
* ``node``: this node's name in the cluster (default: the host name).
* ``lease``: how long a silent node keeps its conversations (default 15 s); leases
  are renewed every third of it.

Nothing here imports psycopg: the file daemon never loads it.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, SecretStr

from daemon.config.fields import _MODEL_CONFIG, Duration, _at_least, _fail
from daemon.errors import VigilError

__all__ = [
    "CREDENTIAL_NAME",
    "DATABASE_ENV",
    "ClusterConfig",
    "DatabaseNotConfigured",
    "check_dsn",
    "default_node_name",
]

DATABASE_ENV = "VIGIL_DATABASE_URL"
CREDENTIAL_NAME = "vigil.database"
NODE_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_URL_SCHEMES = ("postgresql://", "postgres://")
MIN_LEASE = timedelta(seconds=2)
# How much longer than a takeover (lease + one renewal period) a node waits for the
# owner to take an operator request it routed (``daemon.cluster.requests``).
ROUTE_MARGIN = timedelta(seconds=3)
# How long it then waits for the answer of an owner that claimed the request just before.
ROUTE_CLAIMED_GRACE = timedelta(seconds=5)


def check_dsn(value: str) -> str | None:
    """Why ``value`` is not a PostgreSQL connection string (None: it is one). The
    answer never quotes the value: it may hold a password."""
    text = value.strip()
    if not text:
        return "is empty; expected a PostgreSQL URL like postgresql://vigil@db:5432/vigil"
    if text.startswith(_URL_SCHEMES):
        return None
    if "://" in text:
        return "is not a PostgreSQL URL: it must start with postgresql:// or postgres://"
    if "=" in text:  # libpq's key=value form (host=db dbname=vigil ...)
        return None
    return (
        "is not a PostgreSQL connection string: expected postgresql://user@host:port/db "
        "or libpq's key=value form"
    )


def _dsn(value: object) -> object:
    if isinstance(value, SecretStr):
        return value
    if not isinstance(value, str):
        raise _fail(f"expected a string (a PostgreSQL URL), got {type(value).__name__}")
    problem = check_dsn(value)
    if problem is not None:
        raise _fail(problem)
    return SecretStr(value.strip())


def _node_name(value: str) -> str:
    if not NODE_NAME_PATTERN.fullmatch(value):
        raise _fail(
            f"bad node name {value!r}: use 1 to 63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def default_node_name() -> str:
    """The host name, shortened to a valid node name (``node`` when there is none)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:63].lstrip("._-")
    return name or "node"


class DatabaseNotConfigured(VigilError):
    """``[cluster]`` is set but no database URL was found, or the one found is bad."""

    exit_code = 2

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"cluster.database: {problem}")


class ClusterConfig(BaseModel):
    """The ``[cluster]`` table (see the module docstring)."""

    model_config = _MODEL_CONFIG

    database: Annotated[SecretStr, BeforeValidator(_dsn)] | None = None
    node: Annotated[str, AfterValidator(_node_name)] = Field(default_factory=default_node_name)
    lease: Annotated[
        Duration, _at_least(MIN_LEASE, "a lease shorter than 2s would expire between renewals")
    ] = timedelta(seconds=15)

    @property
    def renew_every(self) -> timedelta:
        """How often leases and the node's heartbeat are renewed: a third of ``lease``."""
        return self.lease / 3

    @property
    def route_wait(self) -> timedelta:
        """How long a node waits for the owner of a conversation to take an operator
        request it routed there: long enough for a takeover (the lease, a renewal
        period) and the new owner's first tick, plus :data:`ROUTE_MARGIN`."""
        return self.lease + self.renew_every + ROUTE_MARGIN

    @property
    def route_answer_within(self) -> timedelta:
        """The longest a routed request keeps the control socket waiting: the CLI waits
        at least this long for its answer."""
        return self.route_wait + ROUTE_CLAIMED_GRACE

    def database_url(self, environ: Mapping[str, str] | None = None) -> str:
        """The connection string: ``database``, else ``$VIGIL_DATABASE_URL``, else the
        systemd credential ``vigil.database``. Raises :class:`DatabaseNotConfigured`
        (never quoting a value)."""
        env = os.environ if environ is None else environ
        if self.database is not None:
            return self.database.get_secret_value()
        from_env = env.get(DATABASE_ENV, "")
        if from_env.strip():
            return _checked(from_env, f"${DATABASE_ENV}")
        credentials = env.get("CREDENTIALS_DIRECTORY")
        if credentials:
            path = Path(credentials) / CREDENTIAL_NAME
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise DatabaseNotConfigured(
                    f"the credential {path} cannot be read: {exc.strerror or exc}"
                ) from None
            else:
                return _checked(text, f"the credential {path}")
        raise DatabaseNotConfigured(
            f"no database given: set database in [cluster], ${DATABASE_ENV}, or the systemd "
            f"credential {CREDENTIAL_NAME} (LoadCredential=)"
        )


def _checked(value: str, source: str) -> str:
    problem = check_dsn(value)
    if problem is not None:
        raise DatabaseNotConfigured(f"{source} {problem}")
    return value.strip()
