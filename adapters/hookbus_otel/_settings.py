"""What an instrumentation records with: its tracer, its instruments, and its choices."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Final, Literal

from opentelemetry import metrics, trace

__all__ = ["SCOPE", "SpanMode", "Settings", "library_version"]

#: The instrumentation scope: the tracer's and the meter's name.
SCOPE: Final = "hookbus"

SpanMode = Literal["none", "slow", "all"]


def library_version() -> str:
    """hookbus's installed version, the instrumentation scope's version."""
    try:
        return version("hookbus")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


@dataclass(frozen=True, slots=True)
class Settings:
    """An instrumentation's tracer, instruments and choices, built once by ``instrument``."""

    tracer: trace.Tracer
    hook_duration: metrics.Histogram
    dispatch_duration: metrics.Histogram
    commit_duration: metrics.Histogram
    transaction_duration: metrics.Histogram
    dispatch_spans: SpanMode
    slow_threshold_ns: int
    hook_spans: bool

    @classmethod
    def build(
        cls,
        tracer_provider: trace.TracerProvider | None,
        meter_provider: metrics.MeterProvider | None,
        dispatch_spans: SpanMode,
        slow_threshold: float,
        hook_spans: bool,
    ) -> Settings:
        """The tracer and meter named ``hookbus`` at this version, from the given providers
        (the global ones when not given), and the histograms, in seconds."""
        release = library_version()
        tracer = trace.get_tracer(SCOPE, release, tracer_provider=tracer_provider)
        meter = metrics.get_meter(SCOPE, release, meter_provider=meter_provider)

        def seconds(name: str, description: str) -> metrics.Histogram:
            return meter.create_histogram(name, unit="s", description=description)

        return cls(
            tracer,
            seconds("hookbus.hook.duration", "Duration of one hook's run in a dispatch."),
            seconds("hookbus.dispatch.duration", "Duration of one dispatch (every hook run)."),
            seconds("hookbus.commit.duration", "Duration of a scope's COMMIT (the round trip)."),
            seconds("hookbus.transaction.duration", "Duration of a transaction scope, whole."),
            dispatch_spans,
            round(slow_threshold * 1e9),
            hook_spans,
        )
