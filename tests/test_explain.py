"""``bus.explain(event, key, payload)`` and ``hookbus explain MODULE:BUS EVENT [KEY]``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hookbus import (
    ALLOW_ALL,
    Bus,
    EntityEvent,
    UnknownEventError,
    Verdict,
    hooks_control,
    is_instance,
    where,
)

HOOKBUS = Path(sys.executable).parent / "hookbus"  # the console script pip installed

MYAPP = """
from hookbus import Bus, is_instance, where
bus = Bus(protected=("security",))

@bus.hook("before_add_entity", select=is_instance("Person"), category="integrity")
async def person_age(event): ...

@bus.hook("before_add_entity", priority=-1)
def stamp(event): ...

@bus.hook("before_add_entity", select=is_instance("Company"))
async def company_siren(event): ...

@bus.hook("before_add_entity", select=where(lambda e: e.eid > 10), priority=5)
async def big_ids(event): ...
"""


def make_bus() -> Bus:
    bus = Bus(protected=("security",))

    @bus.hook("before_add_entity", select=is_instance("Person"), category="integrity")
    async def person_age(event: EntityEvent) -> None: ...

    @bus.hook("before_add_entity", priority=-1)
    def stamp(event: EntityEvent) -> None: ...

    @bus.hook("before_add_entity", select=is_instance("Company"))
    async def company_siren(event: EntityEvent) -> None: ...

    @bus.hook("before_add_entity", select=where(lambda e: e.eid > 10), priority=5)
    async def big_ids(event: EntityEvent) -> None: ...

    @bus.hook("before_add_entity", select=is_instance("Person"), category="security")
    async def acl(event: EntityEvent) -> None: ...

    return bus


def names(hooks: object) -> list[str]:
    return [info.name.rsplit(".", 1)[-1] for info in hooks]  # type: ignore[attr-defined]


def test_every_hook_in_call_order_with_its_verdict() -> None:
    answer = make_bus().explain("before_add_entity", "Person")
    assert [(h.hook.name.rsplit(".", 1)[-1], h.verdict) for h in answer.hooks] == [
        ("stamp", Verdict.RUNS),
        ("person_age", Verdict.RUNS),
        ("company_siren", Verdict.SKIPPED),
        ("acl", Verdict.RUNS),
        ("big_ids", Verdict.AT_DISPATCH),
    ]
    assert names(answer.running) == ["stamp", "person_age", "acl"]
    assert names(answer.undecided) == ["big_ids"]
    (skipped,) = answer.skipped
    assert "is_instance('Company') does not match key 'Person'" in skipped.reason
    assert skipped.runs is False and answer.hooks[4].runs is None


def test_the_hooks_not_skipped_are_those_hooks_for_considers() -> None:
    bus = make_bus()
    for key in ("Person", "Company", "Other"):
        answer = bus.explain("before_add_entity", key)
        considered = tuple(h.hook for h in answer.hooks if h.verdict is not Verdict.SKIPPED)
        assert considered == bus.hooks_for("before_add_entity", key)


def test_a_payload_decides_the_dynamic_checks_and_gives_the_key() -> None:
    bus = make_bus()
    small = bus.explain("before_add_entity", payload=EntityEvent("before_add_entity", "Company", 3))
    big = bus.explain("before_add_entity", payload=EntityEvent("before_add_entity", "Company", 30))
    assert small.key == big.key == "Company"
    assert names(small.running) == ["stamp", "company_siren"]
    assert names(big.running) == ["stamp", "company_siren", "big_ids"]
    assert "its check rejects this payload" in small.hooks[-1].reason
    assert not big.undecided


def test_a_payload_whose_key_contradicts_the_key_given_is_refused() -> None:
    with pytest.raises(ValueError, match="the payload's key is 'Company'"):
        make_bus().explain("before_add_entity", "Person", EntityEvent("x", "Company", 1))
    with pytest.raises(TypeError, match="carries EntityEvent payloads"):
        make_bus().explain("before_add_entity", payload=object())


def test_a_category_disabled_here_is_the_reason_and_protected_ones_stay() -> None:
    bus = make_bus()
    with hooks_control(ALLOW_ALL, "integrity", "security"):
        answer = bus.explain("before_add_entity", "Person")
    assert names(answer.running) == ["stamp", "acl"]
    disabled = [h for h in answer.skipped if "disabled" in h.reason]
    assert names(h.hook for h in disabled) == ["person_age"]
    assert disabled[0].reason == "category 'integrity' disabled"
    assert answer.control is not None and "ALLOW_ALL" in answer.control


def test_the_table() -> None:
    text = str(make_bus().explain("before_add_entity", "Person"))
    lines = text.splitlines()
    assert lines[0] == "event 'before_add_entity', key 'Person'"
    assert lines[1].split() == ["#", "VERDICT", "HOOK", "CATEGORY", "PRIORITY", "WHY"]
    assert lines[2].split()[:3] == ["1", "runs", lines[2].split()[2]]
    assert lines[2].split()[2].endswith(".stamp")
    assert "skipped" in lines[4] and "company_siren" in lines[4]
    assert "decided at dispatch" in lines[6]
    assert str(Bus().explain("server_startup")) == (
        "event 'server_startup', key None: no hook is registered on this event"
    )


def test_an_unknown_event_is_named_with_the_closest() -> None:
    with pytest.raises(UnknownEventError, match="before_add_entity"):
        make_bus().explain("before_add_entiti", "Person")


def test_explaining_builds_no_entry() -> None:
    bus = make_bus()
    bus.explain("before_add_entity", "Person")
    assert bus._indexer.tables == {}


# -- the command ---------------------------------------------------------------------------


def hookbus(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(
        [str(HOOKBUS), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=60
    )


@pytest.fixture
def app(tmp_path: Path) -> Path:
    (tmp_path / "myapp.py").write_text(textwrap.dedent(MYAPP))
    return tmp_path


def test_the_command_prints_the_table(app: Path) -> None:
    out = hookbus("explain", "myapp:bus", "before_add_entity", "Person", cwd=app)
    assert out.returncode == 0, out.stderr
    rows = [line.split()[:3] for line in out.stdout.splitlines()[2:]]
    assert rows == [
        ["1", "runs", "myapp.stamp"],
        ["2", "runs", "myapp.person_age"],
        ["skipped", "myapp.company_siren", "default"],
        ["3", "decided", "at"],
    ]
    assert "myapp.big_ids" in out.stdout.splitlines()[-1]


def test_the_command_without_a_key_and_its_mistakes(app: Path) -> None:
    out = hookbus("explain", "myapp:bus", "before_add_entity", cwd=app)
    assert out.returncode == 0, out.stderr
    assert "key None" in out.stdout.splitlines()[0]
    wrong = hookbus("explain", "myapp:bus", "before_add_entiti", cwd=app)
    assert wrong.returncode == 2
    assert wrong.stderr.startswith(
        "hookbus explain: unknown event 'before_add_entiti'; did you mean 'before_add_entity'"
    )
    assert len(wrong.stderr.splitlines()) == 1
    assert hookbus("explain", "myapp:nothing", "x", cwd=app).returncode == 2
    assert "explain" in hookbus("--help", cwd=app).stdout
