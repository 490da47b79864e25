"""Operations that record their calls, for the transaction tests."""

from __future__ import annotations

import hookbus


class Recorded(hookbus.Operation):
    """Appends ``"<name>.<phase>"`` to ``log`` in each phase; raises ``exc`` in ``fail``."""

    def __init__(
        self,
        log: list[str],
        name: str,
        fail: str | None = None,
        exc: BaseException | None = None,
    ) -> None:
        super().__init__()
        self.log = log
        self.name = name
        self.fail = fail
        self.exc = exc or RuntimeError(f"{name} failed in {fail}")

    async def _run(self, phase: str) -> None:
        self.log.append(f"{self.name}.{phase}")
        if phase == self.fail:
            raise self.exc

    async def precommit(self) -> None:
        await self._run("precommit")

    async def revertprecommit(self) -> None:
        await self._run("revertprecommit")

    async def rollback(self) -> None:
        await self._run("rollback")

    async def postcommit(self) -> None:
        await self._run("postcommit")


class LateRecorded(Recorded, hookbus.LateOperation):
    """A late recording operation."""


class LastRecorded(Recorded, hookbus.SingleLastOperation):
    """A single-last recording operation."""
