#!/usr/bin/env bash
# Run tests behind a pgbouncer of their own, in transaction pooling mode.
#
#   tools/pgbouncer.sh [PYTEST ARGUMENTS...] [tests/...]   (no tests/ named: those docs/install.md reports on)
#
# Starts pgbouncer (Debian's package: apt-get install pgbouncer) on a free loopback port in
# front of the PostgreSQL that PGBOUNCER_UPSTREAM names (default 127.0.0.1:5432, trust auth),
# with its config, pid and log in a temporary directory, runs pytest with HOOKBUS_TEST_DSN
# pointing at it, then stops it. Every database reaches the upstream (so do the tests'
# throwaway ones); users are looked up there (auth_query as PGBOUNCER_USER, default root).
# asyncpg gets statement_cache_size=0 (tools/asyncpg_behind_pgbouncer.py): pgbouncer 1.18
# does not carry named prepared statements between server connections.
set -euo pipefail
cd "$(dirname "$0")/.."

upstream_host=${PGBOUNCER_UPSTREAM_HOST:-127.0.0.1}
upstream_port=${PGBOUNCER_UPSTREAM_PORT:-5432}
user=${PGBOUNCER_USER:-root}
python=${VENV:-.venv}/bin/python
[ -x "$python" ] || ./run tests --version >/dev/null  # makes the virtual environment

dir=$(mktemp -d /tmp/hookbus-pgbouncer.XXXXXX)
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$dir/pgbouncer.ini" <<INI
[databases]
* = host=$upstream_host port=$upstream_port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
pool_mode = transaction
auth_type = trust
auth_file = $dir/users.txt
auth_user = $user
max_client_conn = 2000
default_pool_size = 20
max_db_connections = 25
server_reset_query =
ignore_startup_parameters = extra_float_digits,options
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
INI
printf '"%s" ""\n"postgres" ""\n' "$user" >"$dir/users.txt"
# pgbouncer refuses to run as root: run it as postgres then.
as_user=()
if [ "$(id -u)" = 0 ]; then
    chown -R postgres "$dir"
    as_user=(-u postgres)
fi
pgbouncer -d "${as_user[@]}" "$dir/pgbouncer.ini"
stop() {
    if [ -f "$dir/pgbouncer.pid" ]; then
        kill "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true
    fi
    echo "pgbouncer: config and log in $dir" >&2
}
trap stop EXIT
for _ in $(seq 50); do
    [ -f "$dir/pgbouncer.pid" ] && break
    sleep 0.1
done

# No test named: the files docs/install.md reports on, the chaos test last (pgbouncer 1.18
# may crash under its cancel requests: pgbouncer/pgbouncer#801).
case " $* " in
    *" tests"*) ;;
    *) set -- "$@" tests/test_outcome.py tests/test_store.py tests/test_transaction_asyncpg.py \
        tests/test_asyncpg_faults.py tests/test_scope_under_load.py tests/test_chaos.py ;;
esac
HOOKBUS_TEST_DSN="postgresql://$user@127.0.0.1:$port/postgres" \
HOOKBUS_CHAOS_SCOPES=${HOOKBUS_CHAOS_SCOPES:-1000} \
HOOKBUS_CHAOS_TERMINATIONS=${HOOKBUS_CHAOS_TERMINATIONS:-100} \
PYTHONPATH=tools${PYTHONPATH:+:$PYTHONPATH} \
    "$python" -m pytest -p asyncpg_behind_pgbouncer "$@"
