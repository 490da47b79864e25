"""The domain of the web examples: people, an integrity hook, and a mail sent after commit.

web_fastapi.py and web_litestar.py serve it; only their wiring differs.
"""

from __future__ import annotations

from hookbus_asyncpg import Attribute, EntityType, Schema, Store

from hookbus import (
    Bus,
    EntityEvent,
    Operation,
    ServerEvent,
    ValidationError,
    current_transaction,
    is_instance,
)

bus = Bus()
schema = Schema(
    entities=[EntityType("Person", name=Attribute(str, required=True), age=Attribute(int))]
)
store = Store(bus, schema)

#: The welcome mails "sent" (a real application would call its mailer here).
SENT: list[str] = []


class WelcomeMail(Operation):
    """Mail a new person, once the transaction that added them has committed."""

    def __init__(self, eid: int, name: str) -> None:
        super().__init__()
        self.eid, self.name = eid, name

    async def postcommit(self) -> None:
        SENT.append(f"welcome {self.name} (#{self.eid})")


@bus.hook("server_startup")
async def create_tables(event: ServerEvent) -> None:
    """The tables exist before the server takes its first request."""
    await store.create_tables(event.app.state.pool)


@bus.hook(
    "before_add_entity", "before_update_entity", select=is_instance("Person"), category="integrity"
)
def person_age_range(event: EntityEvent) -> None:
    """A refused age aborts the request's transaction: the client gets 422 and this JSON."""
    if "age" in event.edited and not 0 <= event.edited["age"] <= 120:
        raise ValidationError(event.eid, {"age": "age must be between 0 and 120"})


@bus.hook("after_add_entity", select=is_instance("Person"), category="notification")
def welcome(event: EntityEvent) -> None:
    """Schedule the mail: it goes only if the person is committed, never for a rollback."""
    current_transaction().add(WelcomeMail(event.eid, event.edited["name"]))
