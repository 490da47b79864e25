"""OpenTelemetry for hookbus: spans of transaction scopes and their phases, opt-in spans of
dispatches and hooks, and duration histograms in seconds.

>>> import hookbus_otel  # doctest: +SKIP
>>> hookbus_otel.instrument(bus)  # doctest: +SKIP

Depends on ``opentelemetry-api`` only (``pip install hookbus[otel]``); bring an SDK to
export. The tracer and the meter are named ``hookbus``, at hookbus's version, from the
providers given or else the global ones. Nothing is recorded, and nothing is paid on the
dispatch path, by a bus that was never instrumented or has been uninstrumented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, get_args

from opentelemetry import metrics, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from hookbus import Bus, instrumentation
from hookbus.instrumentation import default_entry, observe_scopes, use_entries

from ._entries import entry_factory
from ._scopes import ScopeObserver
from ._settings import SCOPE, Settings, SpanMode

__all__ = [
    "SCOPE",
    "SpanMode",
    "instrument",
    "is_instrumented",
    "trace_headers",
    "uninstrument",
]


@dataclass(slots=True)
class _Installed:
    bus: Bus
    observer: ScopeObserver | None
    previous: instrumentation.ScopeObserver | None


# id(bus) -> what instrument() installed on it (buses are not weakly referenceable).
_installed: Final[dict[int, _Installed]] = {}


def instrument(
    bus: Bus,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
    dispatch_spans: SpanMode = "none",
    slow_threshold: float = 0.001,
    hook_spans: bool = False,
    hook_metrics: bool = False,
    transactions: bool = True,
) -> None:
    """Record what ``bus`` and the transaction scopes do, with OpenTelemetry.

    - ``transactions`` (default): a span per transaction scope (``hookbus.transaction``)
      and per phase (``hookbus.precommit``, ``hookbus.commit``, ``hookbus.postcommit``,
      ``hookbus.revertprecommit``, ``hookbus.rollback``), and the ``hookbus.commit.duration``
      and ``hookbus.transaction.duration`` histograms. Scopes are not tied to a bus: this
      watches every scope of the process until ``uninstrument(bus)``.
    - ``dispatch_spans``: ``"none"`` (default), ``"slow"`` (a dispatch that took more than
      ``slow_threshold`` seconds) or ``"all"``: a span per dispatch, ``hookbus.emit EVENT``;
      with ``hook_spans`` also a span per hook (``hookbus.hook NAME``) in those dispatches
      (in ``"slow"`` mode, only the hooks over the threshold).
    - ``hook_metrics``: the ``hookbus.hook.duration`` and ``hookbus.dispatch.duration``
      histograms without any dispatch span (they are recorded whenever dispatch spans are).

    Dispatches are instrumented only when ``dispatch_spans`` is not ``"none"`` or
    ``hook_metrics`` is set: only then does the bus build instrumented entries.
    """
    if not isinstance(bus, Bus):
        raise TypeError(f"instrument() takes a hookbus.Bus, not {bus!r}")
    if dispatch_spans not in get_args(SpanMode):
        raise ValueError(
            f"dispatch_spans is one of {', '.join(map(repr, get_args(SpanMode)))}, "
            f"not {dispatch_spans!r}"
        )
    if isinstance(slow_threshold, bool) or not isinstance(slow_threshold, int | float):
        raise TypeError(f"slow_threshold is a number of seconds, not {slow_threshold!r}")
    if not slow_threshold >= 0:
        raise ValueError(f"slow_threshold is a number of seconds >= 0, not {slow_threshold!r}")
    if hook_spans and dispatch_spans == "none":
        raise ValueError(
            'hook_spans=True records hooks inside the dispatch spans: pass dispatch_spans="all" '
            'or "slow" as well'
        )
    if id(bus) in _installed:
        raise RuntimeError("this bus is already instrumented: call uninstrument(bus) first")
    settings = Settings.build(
        tracer_provider, meter_provider, dispatch_spans, slow_threshold, hook_spans
    )
    observer = previous = None
    if transactions:
        observer = ScopeObserver(settings)
        previous = observe_scopes(observer)
    if dispatch_spans != "none" or hook_metrics:
        use_entries(bus, entry_factory(settings))
    _installed[id(bus)] = _Installed(bus, observer, previous)


def uninstrument(bus: Bus) -> None:
    """Stop recording what ``bus`` (and, if it was asked, the transaction scopes) do.

    The bus builds hookbus's own entries again; the scope observer set by
    ``instrument(bus)`` is removed (the one it replaced, if any, comes back).
    ``LookupError`` if the bus is not instrumented.
    """
    installed = _installed.pop(id(bus), None)
    if installed is None:
        raise LookupError("this bus is not instrumented")
    use_entries(bus, default_entry)
    if installed.observer is not None:
        current = observe_scopes(installed.previous)
        if current is not installed.observer:  # another instrumentation set its own since
            observe_scopes(current)


def is_instrumented(bus: Bus) -> bool:
    """Tell whether ``instrument(bus)`` is in force."""
    return id(bus) in _installed


_W3C: Final = TraceContextTextMapPropagator()


def trace_headers() -> dict[str, str]:
    """The W3C trace context of the current span, as headers to carry with a message.

    ``{"traceparent": ..., "tracestate": ...}`` (``tracestate`` only when there is one):
    store them with an outbox row or send them as NATS headers, so that the consumer's spans
    join the trace of the scope that produced the message. Empty when no span is recording
    a trace here (no SDK, or outside any span).
    """
    headers: dict[str, str] = {}
    _W3C.inject(headers)
    return headers
