"""The entity store: its schema, the tables and statements made from it, and its actions."""
