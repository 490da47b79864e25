"""The transaction scope on asyncpg: the scope, its backend, its lazy connection, its options,
the finder of a lost COMMIT's outcome, and the test mode that runs scopes on savepoints."""
