"""Connecting to NATS the way the ``nats`` CLI and nats-py users expect, never showing secrets.

The options are the ``nats`` CLI's, each defaulting to the variable it reads: ``--server``
(``NATS_URL``, comma-separated URLs, else ``nats://127.0.0.1:4222``), ``--creds``
(``NATS_CREDS``: a credentials file, nats-py's ``user_credentials``), ``--nkey``
(``NATS_NKEY``: a seed file), ``--user``/``--password`` (``NATS_USER``/``NATS_PASSWORD``),
``--token`` (``NATS_TOKEN``), ``--tlscert``/``--tlskey``/``--tlsca``
(``NATS_CERT``/``NATS_KEY``/``NATS_CA``). Prefer the variables and files: a command line is
visible to every user of the machine. The outbox and consume commands both read them here. What is
shown of the connection (:func:`shown_servers`) never includes a password or a token.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

__all__ = ["DEFAULT_URL", "add_nats_options", "connect_options", "shown_servers"]

DEFAULT_URL: Final = "nats://127.0.0.1:4222"

_OPTIONS: Final = (
    ("--server", "NATS_URL", "the NATS server URL(s), comma-separated"),
    ("--creds", "NATS_CREDS", "a user credentials file (JWT and seed)"),
    ("--nkey", "NATS_NKEY", "an nkey seed file"),
    ("--user", "NATS_USER", "a user name"),
    ("--password", "NATS_PASSWORD", "the user's password"),
    ("--token", "NATS_TOKEN", "an authentication token"),
    ("--tlscert", "NATS_CERT", "a client certificate file (TLS)"),
    ("--tlskey", "NATS_KEY", "the client certificate's key file (TLS)"),
    ("--tlsca", "NATS_CA", "a CA certificate file to verify the server (TLS)"),
)

_KEYWORDS: Final = (
    ("--creds", "user_credentials"),
    ("--nkey", "nkeys_seed"),
    ("--user", "user"),
    ("--password", "password"),
    ("--token", "token"),
)


def add_nats_options(parser: argparse.ArgumentParser) -> None:
    """Add the NATS connection options to ``parser`` (each defaults to its variable)."""
    group = parser.add_argument_group("NATS (each option defaults to its variable)")
    for flag, env, text in _OPTIONS:
        group.add_argument(flag, metavar=env, default=None, help=f"{text} (${env})")


def connect_options(
    args: argparse.Namespace, environ: os._Environ[str] | dict[str, str] | None = None
) -> dict[str, Any]:
    """``nats.connect`` keyword arguments from the parsed options, else the variables."""
    env = os.environ if environ is None else environ

    def given(flag: str, variable: str) -> str | None:
        return getattr(args, flag.lstrip("-"), None) or env.get(variable) or None

    values = {flag: given(flag, variable) for flag, variable, _ in _OPTIONS}
    servers = (values["--server"] or DEFAULT_URL).split(",")
    options: dict[str, Any] = {"servers": [s.strip() for s in servers if s.strip()]}
    for flag, keyword in _KEYWORDS:
        if values[flag]:
            options[keyword] = values[flag]
    if values["--tlscert"] or values["--tlsca"]:
        import ssl

        context = ssl.create_default_context(cafile=values["--tlsca"])
        if values["--tlscert"]:
            context.load_cert_chain(values["--tlscert"], values["--tlskey"])
        options["tls"] = context
    return options


def shown_servers(options: dict[str, Any]) -> str:
    """The servers, as they may be printed: user names kept, passwords and tokens hidden."""
    shown = []
    for server in options["servers"]:
        parts = urlsplit(server if "://" in server else f"nats://{server}")
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        if parts.username and parts.password:
            host = f"{parts.username}:***@{host}"
        elif parts.username:
            host = f"***@{host}"  # a lone user part is a token
        shown.append(urlunsplit((parts.scheme, host, parts.path, "", "")))
    return ",".join(shown)
