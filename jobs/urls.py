"""Webhook URLs carry secrets (Slack and Discord put the token in the path; a URL can
hold a ``user:password@``): what may be shown of one, and what a valid one is.

:func:`redact_url` is the one way a URL is shown anywhere (logs, the journal and so
history/export and the mirror, config and reload errors): ``scheme://host[:port]/…``.
Pure functions, no I/O.
"""

from __future__ import annotations

import re
import urllib.parse

__all__ = ["check_header_name", "check_header_value", "check_url", "redact_url"]

# RFC 9110 field-name: a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A field value: visible ASCII, space and tab, obs-text; no CR, LF or NUL (no splitting).
_BAD_VALUE_CHAR = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_HOST = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]+")
ELLIPSIS = "…"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_PORT = re.compile(r":[0-9]{1,5}$")


def redact_url(url: str) -> str:
    """``scheme://host[:port]/…``: never the userinfo, path, query or fragment."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<url>"
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    host_port = authority.rpartition("@")[2]  # the userinfo goes
    host, _, port = host_port.rpartition(":") if _PORT.search(host_port) else (host_port, "", "")
    shown_scheme = scheme if _SCHEME.fullmatch(scheme) else "?"
    shown_host = host if _HOST.fullmatch(host) else "?"
    shown_port = f":{port}" if port else ""
    tail = "/" + ELLIPSIS if rest[len(authority) :] else ""
    return f"{shown_scheme}://{shown_host}{shown_port}{tail}"


def check_url(url: str) -> str | None:  # noqa: PLR0911  # one return per problem reads best
    """Why ``url`` is not a usable webhook URL (naming it redacted), or None."""
    shown = redact_url(url)
    scheme, sep, _ = url.partition("://")
    if scheme not in ("http", "https") or not sep:
        return f"bad url {shown}: expected http://host[:port]/path or https://..."
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return f"bad url {shown}: cannot be parsed"
    if "@" in parts.netloc:
        return (
            f"bad url {shown}: a user name or password in the URL is refused (it would be "
            "sent and shown in clear); put credentials in headers"
        )
    if not parts.hostname:
        return f"bad url {shown}: expected http://host[:port]/path or https://..."
    try:
        port = parts.port
    except ValueError:
        return f"bad url {shown}: the port must be a number from 1 to 65535"
    if port == 0:
        return f"bad url {shown}: the port must be a number from 1 to 65535"
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        return f"bad url {shown}: contains whitespace or control characters"
    return None


def check_header_name(name: str) -> str | None:
    """Why ``name`` is not an HTTP header name, or None."""
    if not _TOKEN.fullmatch(name):
        return (
            f"bad header name {name[:64]!r}: use letters, digits and !#$%&'*+-.^_`|~ "
            "(no spaces or colons)"
        )
    return None


def check_header_value(value: str) -> str | None:
    """Why ``value`` cannot be sent as a header value, never quoting it (it may be a
    token), or None."""
    if _BAD_VALUE_CHAR.search(value):
        return "the value contains a line break or control character (not shown)"
    if value != value.strip(" \t"):
        return "the value starts or ends with whitespace (not shown)"
    return None
