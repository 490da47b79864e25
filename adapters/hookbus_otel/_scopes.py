"""Spans of transaction scopes and their phases, read from the scopes' state moves.

Every scope's lifecycle is a sequence of state moves (``TransactionState``); each phase is
the time spent in one state, so the observer that hookbus consults at each move (when one is
set) opens and closes the spans:

========================  ====================================================
span                      the state it covers
========================  ====================================================
``hookbus.transaction``   the scope, from BEGIN's answer to the end of the block
``hookbus.precommit``     ``PRECOMMITTING``: the precommit operations
``hookbus.commit``        ``COMMITTING``: the COMMIT round trip
``hookbus.postcommit``    ``COMMITTED``: the postcommit operations
``hookbus.revertprecommit``  ``ROLLING_BACK``: revertprecommit operations, then ROLLBACK
``hookbus.rollback``      ``ROLLED_BACK``: the rollback operations
========================  ====================================================

The scope's span is current in the scope's block (dispatches made there nest in it); the
phase spans are its children. ``hookbus.commit.duration`` records the COMMIT phase and
``hookbus.transaction.duration`` the scope, both with ``hookbus.transaction.outcome``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from time import time_ns
from typing import Final

from opentelemetry import context, trace
from opentelemetry.trace import Span, Status, StatusCode

from hookbus import Transaction, TransactionState

from ._settings import Settings

__all__ = ["ScopeObserver"]

_S = TransactionState
_PHASES: Final = {
    _S.PRECOMMITTING: "hookbus.precommit",
    _S.COMMITTING: "hookbus.commit",
    _S.COMMITTED: "hookbus.postcommit",
    _S.ROLLING_BACK: "hookbus.revertprecommit",
    _S.ROLLED_BACK: "hookbus.rollback",
}
# Where the observer keeps a scope's spans: the scope's own __dict__ (scopes have one).
_SLOT: Final = "_hookbus_otel_watch"


@dataclass(slots=True)
class _Watch:
    scope: Span
    token: object | None
    started: int
    phase: Span | None = None
    phase_started: int = 0


class ScopeObserver:
    """The observer of every transaction scope (``hookbus.instrumentation.observe_scopes``)."""

    __slots__ = ("settings",)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def moved(self, tx: Transaction, old: TransactionState, new: TransactionState) -> None:
        """Close the span of the phase ``old`` was, open the one ``new`` is."""
        now = time_ns()
        watch: _Watch | None = vars(tx).get(_SLOT)
        if watch is None:
            if old is not _S.NEW:  # the scope was opened before the observer was set
                return
            watch = self._open(tx, now, attach=new is _S.ACTIVE)
            if new is _S.FAILED:  # BEGIN failed: a scope that never opened
                self._end_scope(tx, watch, now)
            return
        if watch.phase is not None:
            if old is _S.COMMITTING:
                self.settings.commit_duration.record(
                    (now - watch.phase_started) / 1e9,
                    {"hookbus.transaction.outcome": _outcome(new)},
                )
            if new in (_S.ROLLING_BACK, _S.FAILED):
                watch.phase.set_status(Status(StatusCode.ERROR, f"ended in {new.value}"))
            watch.phase.end(end_time=now)
            watch.phase = None
        name = _PHASES.get(new)
        if name is not None:
            parent = trace.set_span_in_context(watch.scope)
            watch.phase = self.settings.tracer.start_span(name, context=parent, start_time=now)
            watch.phase_started = now

    def ended(self, tx: Transaction) -> None:
        """Close the last phase's span and the scope's; the scope's context is left."""
        watch: _Watch | None = vars(tx).pop(_SLOT, None)
        if watch is None:
            return
        now = time_ns()
        if watch.phase is not None:
            watch.phase.end(end_time=now)
            watch.phase = None
        if watch.token is not None:
            context.detach(watch.token)  # type: ignore[arg-type]
        error = sys.exc_info()[1]  # what leaves the scope's block, if anything
        if error is not None:
            watch.scope.record_exception(error)
        self._end_scope(tx, watch, now, failed=error is not None)

    def _open(self, tx: Transaction, now: int, *, attach: bool) -> _Watch:
        scope = self.settings.tracer.start_span(
            "hookbus.transaction",
            attributes={"hookbus.backend": type(tx.backend).__qualname__},
            start_time=now,
        )
        token = context.attach(trace.set_span_in_context(scope)) if attach else None
        watch = _Watch(scope, token, now)
        vars(tx)[_SLOT] = watch
        return watch

    def _end_scope(self, tx: Transaction, watch: _Watch, now: int, *, failed: bool = True) -> None:
        vars(tx).pop(_SLOT, None)
        outcome = _outcome(tx.state)
        scope = watch.scope
        scope.set_attribute("hookbus.transaction.outcome", outcome)
        scope.set_attribute("hookbus.operations", len(tx.operations))
        if tx.postcommit_errors:
            scope.set_attribute("hookbus.postcommit_errors", tx.postcommit_errors)
        if tx.state is _S.FAILED or (failed and tx.state is not _S.COMMITTED):
            scope.set_status(Status(StatusCode.ERROR, f"the scope {outcome}"))
        scope.end(end_time=now)
        self.settings.transaction_duration.record(
            (now - watch.started) / 1e9, {"hookbus.transaction.outcome": outcome}
        )


def _outcome(state: TransactionState) -> str:
    if state is _S.COMMITTED:
        return "committed"
    if state in (_S.ROLLING_BACK, _S.ROLLED_BACK):
        return "rolled_back"
    if state is _S.FAILED:
        return "failed"
    return str(state.value)
