"""Connecting to NATS the way nats-py and the ``nats`` CLI users expect, without printing secrets.

Options, each with the environment variable the ``nats`` CLI reads: ``--nats-url``
(``NATS_URL``, comma-separated servers, default ``nats://127.0.0.1:4222``), ``--creds``
(``NATS_CREDS``: a credentials file, nats-py's ``user_credentials``), ``--nkey``
(``NATS_NKEY``: a seed file), ``--tls-ca`` (``NATS_CA``), ``--tls-cert`` (``NATS_CERT``) and
``--tls-key`` (``NATS_KEY``), ``--tls-hostname``; a user and password or a token go in the URL
(``nats://user:secret@host:4222``) or ``NATS_USER``/``NATS_PASSWORD``/``NATS_TOKEN``. What is
shown of the connection (:func:`shown_servers`) never includes a password or a token.
"""

from __future__ import annotations

import argparse
import os
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["add_nats_options", "connect_options", "shown_servers"]

DEFAULT_URL = "nats://127.0.0.1:4222"

_OPTIONS = (
    (
        "--nats-url",
        "NATS_URL",
        f"servers, comma separated (default: NATS_URL, else {DEFAULT_URL})",
    ),
    ("--creds", "NATS_CREDS", "a NATS credentials file (default: NATS_CREDS)"),
    ("--nkey", "NATS_NKEY", "an NKey seed file (default: NATS_NKEY)"),
    ("--tls-ca", "NATS_CA", "CA certificates to verify the server (default: NATS_CA)"),
    ("--tls-cert", "NATS_CERT", "client certificate (default: NATS_CERT)"),
    ("--tls-key", "NATS_KEY", "client certificate's key (default: NATS_KEY)"),
    ("--tls-hostname", None, "the name expected in the server's certificate"),
)


def add_nats_options(parser: argparse.ArgumentParser) -> None:
    """Add the NATS connection options to ``parser`` (values default to the environment)."""
    group = parser.add_argument_group("NATS connection")
    for flag, env, text in _OPTIONS:
        default = os.environ.get(env) if env else None
        group.add_argument(flag, default=default, help=text, metavar="VALUE")


def connect_options(args: argparse.Namespace) -> dict[str, Any]:
    """``nats.connect`` keyword arguments from the parsed options and the environment."""
    servers = [s.strip() for s in (args.nats_url or DEFAULT_URL).split(",") if s.strip()]
    options: dict[str, Any] = {"servers": servers, "name": "hookbus"}
    if args.creds:
        options["user_credentials"] = args.creds
    if args.nkey:
        options["nkeys_seed"] = args.nkey
    for env, key in (("NATS_USER", "user"), ("NATS_PASSWORD", "password"), ("NATS_TOKEN", "token")):
        if os.environ.get(env):
            options[key] = os.environ[env]
    if args.tls_ca or args.tls_cert or any(urlsplit(s).scheme == "tls" for s in servers):
        import ssl

        context = ssl.create_default_context(cafile=args.tls_ca)
        if args.tls_cert:
            context.load_cert_chain(args.tls_cert, args.tls_key)
        options["tls"] = context
        if args.tls_hostname:
            options["tls_hostname"] = args.tls_hostname
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
