"""The PostgreSQL servers that tests and the demo run on: the embedded one, ``EmbeddedPostgres``."""
