"""hookbus in one screen: declared events, selectors, priorities, Break, collect, categories.

Run it: ``./run demo`` (or ``.venv/bin/python examples/quickstart.py``).
"""

from __future__ import annotations

import asyncio

import hookbus
from hookbus import ALLOW_ALL, Break, EntityEvent, ValidationError, hooks_control, is_instance

bus = hookbus.Bus(protected=("activeintegrity",))


@bus.hook(
    "before_add_entity",
    "before_update_entity",
    select=is_instance("Person"),
    category="integrity",
)
async def person_age_range(event: EntityEvent) -> None:
    """CubicWeb's classic: refuse an age out of range."""
    if "age" in event.edited and not 0 <= event.edited["age"] <= 120:
        raise ValidationError(event.eid, {"age": "age must be between 0 and 120"})


@bus.hook("before_add_entity", select=is_instance("Person"), category="metadata", priority=-10)
def upper_case_name(event: EntityEvent) -> None:
    """Agile Data's classic: a plain function may change the pending edit."""
    if "name" in event.edited:
        event.edited["name"] = event.edited["name"].upper()


@bus.hook("before_delete_entity", select=is_instance("Person"))
async def soft_delete(event: EntityEvent) -> None:
    """Breaking a before-hook cancels the action; the emitter learns it."""
    raise Break("archived instead")


@bus.hook("after_add_entity", category="notification")
async def welcome(event: EntityEvent) -> str:
    return f"welcome {event.etype} #{event.eid}"


async def main() -> None:
    ann = EntityEvent("before_add_entity", "Person", 1, {"name": "ann", "age": 40})
    await bus.emit("before_add_entity", ann)
    print("edited after the before-hooks:", dict(ann.edited))

    try:
        await bus.emit(
            "before_add_entity", EntityEvent("before_add_entity", "Person", 2, {"age": 130})
        )
    except ValidationError as error:
        print("refused:", error.to_json().decode())

    broken = await bus.emit(
        "before_delete_entity", EntityEvent("before_delete_entity", "Person", 1)
    )
    print("delete cancelled by a hook:", broken and broken.value)

    print(
        "collected:",
        await bus.collect("after_add_entity", EntityEvent("after_add_entity", "Person", 1)),
    )
    with hooks_control(ALLOW_ALL, "notification"):
        print(
            "collected with notifications off:",
            await bus.collect("after_add_entity", EntityEvent("after_add_entity", "Person", 1)),
        )

    print("\nthe hooks of before_add_entity for a Person, in call order:")
    for info in bus.hooks_for("before_add_entity", "Person"):
        print(f"  {info.priority:>4}  {info.category:<12} {info.name}")


if __name__ == "__main__":
    asyncio.run(main())
