"""The outbox's writing side: an event's row written in the transaction that made it, the
plugin that creates its table, and the wire format that the relay publishes."""
