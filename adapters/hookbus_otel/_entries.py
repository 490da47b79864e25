"""Instrumented index entries: the hooks of an ``(event, key)``, timed, with opt-in spans.

Built only by the factory that ``instrument`` gives a bus (``hookbus.instrumentation.
use_entries``): a bus not instrumented builds hookbus's own entries and its dispatch never
reaches this module. An
instrumented entry keeps every rule of hookbus's entries (a ``Break`` stops the hooks, errors
carry a note naming the hook, a recursion becomes a ``HookRecursionError``, a plain hook
returning a coroutine is refused, a payload contradicting its dispatch is refused) and adds:

- the ``hookbus.hook.duration`` and ``hookbus.dispatch.duration`` histograms, always;
- with ``dispatch_spans="all"``, a live span per dispatch (``hookbus.emit EVENT``), current
  while its hooks run (so the dispatches they make nest in it), and with ``hook_spans`` one
  per hook (``hookbus.hook NAME``) inside it;
- with ``dispatch_spans="slow"``, the same spans made afterwards, only for dispatches (and,
  with ``hook_spans``, hooks) that took longer than the threshold, with their real start and
  end times: a quick dispatch creates no span at all. Spans made afterwards are not current
  while the hooks run: a slow dispatch nested in a slow hook is parented to what was current.
"""

from __future__ import annotations

from collections.abc import Callable
from time import time_ns
from typing import Any, NamedTuple

from opentelemetry import context, trace
from opentelemetry.trace import Span, Status, StatusCode

from hookbus import Break, Results
from hookbus.instrumentation import (
    NOTHING,
    Chosen,
    Entry,
    EntryFactory,
    check_payload_event,
    check_result,
    entry,
    note_hook,
    recursion_error,
)

from ._settings import Settings

__all__ = ["entry_factory"]


class _Hook(NamedTuple):
    fn: Any
    check: Callable[[Any], bool] | None
    is_async: bool
    name: str
    attributes: dict[str, str]


class _Timed(NamedTuple):
    hook: _Hook
    start: int
    end: int
    error: BaseException | None


class _Instrumented:
    """The hooks of an entry, run timed, with the spans its settings ask for."""

    __slots__ = ("event", "hooks", "names_event", "settings")

    def __init__(
        self, settings: Settings, event: str, hooks: tuple[_Hook, ...], names_event: bool
    ) -> None:
        self.settings, self.event, self.hooks, self.names_event = (
            settings, event, hooks, names_event,
        )  # fmt: skip

    def entry(self) -> Entry:
        """The entry that runs these hooks (its ``emit`` and ``collect``)."""

        async def emit(payload: Any) -> Break | None:
            return await self.run(self.event, payload, None)

        async def collect(payload: Any) -> Results:
            results = Results()
            results.broken = await self.run(self.event, payload, results)
            return results

        return entry(emit, collect)

    async def run(self, event: str, payload: Any, results: Results | None) -> Break | None:
        if self.names_event:
            check_payload_event(event, payload)
        settings = self.settings
        live = settings.dispatch_spans == "all"
        timed: list[_Timed] = []
        attributes = {"hookbus.event": event}
        span: Span | None = None
        token = None
        start = time_ns()
        if live:
            span = settings.tracer.start_span(
                f"hookbus.emit {event}", attributes=attributes, start_time=start
            )
            token = context.attach(trace.set_span_in_context(span))
        error: BaseException | None = None
        broken: Break | None = None
        try:
            broken = await self._hooks(event, payload, results, timed, live)
        except BaseException as exc:
            error = exc
            raise
        finally:
            end = time_ns()
            settings.dispatch_duration.record((end - start) / 1e9, attributes)
            if span is not None:
                assert token is not None
                context.detach(token)
                _close(span, error, broken, end)
            elif settings.dispatch_spans == "slow" and end - start > settings.slow_threshold_ns:
                self._afterwards(event, start, end, timed, error, broken)
        return broken

    async def _hooks(
        self,
        event: str,
        payload: Any,
        results: Results | None,
        timed: list[_Timed],
        live: bool,
    ) -> Break | None:
        settings = self.settings
        hook_spans = live and settings.hook_spans
        hook: _Hook | None = None
        check: Callable[[Any], bool] | None = None
        try:
            for hook in self.hooks:
                check = hook.check
                if check is not None:
                    if not check(payload):
                        continue
                    check = None
                span = token = None
                error: BaseException | None = None
                start = time_ns()
                if hook_spans:
                    span = settings.tracer.start_span(
                        f"hookbus.hook {hook.name}", attributes=hook.attributes, start_time=start
                    )
                    token = context.attach(trace.set_span_in_context(span))
                try:
                    result = hook.fn(payload)
                    if hook.is_async:
                        result = await result
                    elif result is not None:
                        check_result(hook.fn, event, result)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    end = time_ns()
                    settings.hook_duration.record((end - start) / 1e9, hook.attributes)
                    timed.append(_Timed(hook, start, end, error))
                    if span is not None:
                        assert token is not None
                        context.detach(token)
                        _close(span, error, None, end)
                if results is not None:
                    results.append(result)
        except Break as broken:
            return broken
        except RecursionError as exc:
            raise recursion_error(exc, event)  # noqa: B904  (chained inside)
        except Exception as exc:
            assert hook is not None
            note_hook(exc, hook.fn, event, selector=check is not None)
            raise
        return None

    def _afterwards(
        self,
        event: str,
        start: int,
        end: int,
        timed: list[_Timed],
        error: BaseException | None,
        broken: Break | None,
    ) -> None:
        """The spans of a slow dispatch, and of its slow hooks, made once it has run."""
        settings = self.settings
        span = settings.tracer.start_span(
            f"hookbus.emit {event}", attributes={"hookbus.event": event}, start_time=start
        )
        if settings.hook_spans:
            parent = trace.set_span_in_context(span)
            for hook, hook_start, hook_end, hook_error in timed:
                if hook_end - hook_start > settings.slow_threshold_ns:
                    child = settings.tracer.start_span(
                        f"hookbus.hook {hook.name}",
                        context=parent,
                        attributes=hook.attributes,
                        start_time=hook_start,
                    )
                    _close(child, hook_error, None, hook_end)
        _close(span, error, broken, end)


def _close(span: Span, error: BaseException | None, broken: Break | None, end: int) -> None:
    if broken is not None:
        span.set_attribute("hookbus.broken", True)
    if error is not None and not isinstance(error, Break):
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__qualname__}: {error}"))
    span.end(end_time=end)


def entry_factory(settings: Settings) -> EntryFactory:
    """The factory of instrumented entries recording with ``settings``."""

    def make_entry(event: str, hooks: tuple[Chosen, ...], names_event: bool) -> Entry:
        if not hooks:
            return NOTHING
        timed = tuple(
            _Hook(c.info.fn, c.check, c.info.is_async, c.info.name,
                  {"hookbus.event": event, "hookbus.hook.name": c.info.name})
            for c in hooks
        )  # fmt: skip
        return _Instrumented(settings, event, timed, names_event).entry()

    return make_entry
