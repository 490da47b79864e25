"""The NATS connection a worker (``Consumer``, ``Relay``, ``UnorderedRelay``) is given, and
the JetStream context it works through.

Each takes the connection (a ``nats.aio.client.Client``) and an optional ``js=`` context of
one's own (a domain, a prefix, a timeout). A ``JetStreamContext`` in the connection's place
(or as ``js=`` alone), the form of earlier releases, still works for one release with a
``DeprecationWarning``: its connection is read from the context's private ``_nc``, as
nats-py offers no public way to it.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

__all__ = ["connection_of"]


def connection_of(
    nc: Any, js: Any, *, worker: str, leading: str, position: str
) -> tuple[Client, JetStreamContext]:
    """The connection and the JetStream context ``worker`` works with, or ``TypeError``.

    ``leading`` is what comes before the connection in ``worker``'s call (``"bus, pool"``),
    ``position`` the connection's place in it (``"third"``), for the messages. Call it from
    the worker's ``__init__``: the ``DeprecationWarning`` names the line that built it.
    """
    from nats.aio.client import Client
    from nats.js import JetStreamContext

    if isinstance(nc, Client):  # js= unchecked: a wrapper of a context is welcome
        return nc, nc.jetstream() if js is None else js
    if nc is None and not isinstance(js, JetStreamContext):
        raise TypeError(f"{worker} needs the NATS connection: {worker}({leading}, nc, ...)")
    if nc is not None and (not isinstance(nc, JetStreamContext) or js is not None):
        raise TypeError(
            f"{worker}'s {position} argument is a nats.aio.client.Client (the connection), "
            f"not {type(nc).__name__}"
        )
    deprecated: JetStreamContext = js if nc is None else nc
    warnings.warn(
        f"{worker}({leading}, js, ...) with a JetStreamContext is deprecated: pass the "
        f"connection, {worker}({leading}, nc, ...) (and js=... for a context of your own)",
        DeprecationWarning,
        stacklevel=3,
    )
    # nats-py keeps the context's connection private: read only on this deprecated path.
    connection: Client = deprecated._nc
    return connection, deprecated
