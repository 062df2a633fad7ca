#!/usr/bin/env bash
# Throw-away PostgreSQL cluster for tests and local runs.
#
#   infra/local/postgres.sh start DIR PORT   # prints the superuser DSN on stdout
#   infra/local/postgres.sh stop DIR         # safe to call twice, or on a DIR never started
#   infra/local/postgres.sh crash DIR        # immediate stop, as a crash would (fault tests);
#                                            # `start DIR PORT` again recovers from the WAL
#
# DIR holds everything: data/ (the cluster), sock/ (the unix socket, so we never touch
# /var/run/postgresql) and server.log. The server listens on 127.0.0.1:PORT only and trusts
# every local connection: this is a test cluster, never put data you care about in it.
# Progress goes to stderr so that `DSN=$(postgres.sh start ...)` captures only the DSN.
set -euo pipefail

log() { printf 'postgres.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
	cat >&2 <<'EOF'
usage: postgres.sh start DIR PORT
       postgres.sh stop DIR
       postgres.sh crash DIR
EOF
	exit 2
}

# bindir finds the directory holding initdb/pg_ctl, installing PostgreSQL when it is absent.
bindir() {
	local dir=""
	if command -v pg_config >/dev/null 2>&1; then
		dir=$(pg_config --bindir)
	fi
	if [[ -z "$dir" || ! -x "$dir/initdb" ]]; then
		# Debian's pg_config may live in libpq-dev without the server; look for any
		# installed server before installing one.
		local found
		found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
		if [[ -n "$found" && -x "$found/initdb" ]]; then
			dir=$found
		else
			log "initdb not found; installing PostgreSQL with apt-get"
			[[ $(id -u) -eq 0 ]] || die "PostgreSQL is not installed and we are not root: apt-get install -y postgresql"
			apt-get update >&2
			DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql >&2
			dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
			[[ -n "$dir" && -x "$dir/initdb" ]] || die "apt-get installed postgresql but no initdb was found"
		fi
	fi
	printf '%s\n' "$dir"
}

# as_owner runs a command as the cluster's OS user: postgres when we are root (the server
# refuses to run as root), ourselves otherwise.
as_owner() {
	if [[ $(id -u) -eq 0 ]]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

start() {
	local dir=$1 port=$2
	[[ "$port" =~ ^[0-9]+$ ]] && ((port > 0 && port < 65536)) || die "PORT must be 1..65535, got '$port'"
	local bin
	bin=$(bindir)
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	local data=$dir/data sock=$dir/sock logfile=$dir/server.log
	# The unix socket path must fit in sun_path (107 bytes) with its ".s.PGSQL.PORT" name.
	((${#sock} + 20 < 107)) || die "DIR path too long for a unix socket: $sock"
	mkdir -p "$sock"
	if [[ $(id -u) -eq 0 ]]; then
		id postgres >/dev/null 2>&1 || die "running as root but there is no postgres OS user"
		chown -R postgres: "$dir"
		# The server needs to reach DIR through its parents.
		local p=$dir
		while [[ "$p" != "/" ]]; do
			p=$(dirname "$p")
			runuser -u postgres -- test -x "$p" || die "postgres OS user cannot enter $p; choose a DIR under /tmp"
		done
	fi

	if [[ ! -s "$data/PG_VERSION" ]]; then
		log "initdb $data"
		as_owner "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >&2
		# Settings for a 2-core test box: enough connections for several pools racing,
		# memory that fits beside the tests, durability as in production (fsync on).
		cat >>"$data/postgresql.conf" <<EOF

# --- written by infra/local/postgres.sh ---
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$sock'
fsync = on
synchronous_commit = on
full_page_writes = on
max_connections = 200
shared_buffers = 256MB
effective_cache_size = 512MB
work_mem = 8MB
maintenance_work_mem = 64MB
wal_buffers = 16MB
max_wal_size = 2GB
checkpoint_timeout = 15min
checkpoint_completion_target = 0.9
max_worker_processes = 4
max_parallel_workers = 2
max_parallel_workers_per_gather = 1
max_locks_per_transaction = 256
log_min_messages = warning
log_min_duration_statement = -1
EOF
	fi

	if as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
		# Line 4 of postmaster.pid is the port the running server listens on.
		local running
		running=$(sed -n 4p "$data/postmaster.pid" 2>/dev/null || true)
		[[ "$running" == "$port" ]] || die "a server already runs in $data on port $running, not $port; stop it first"
		log "already running in $data"
	else
		# Reusing a stopped cluster: listen on the port asked for this time.
		sed -i -E "s/^port = [0-9]+$/port = $port/" "$data/postgresql.conf"
		log "starting on 127.0.0.1:$port (log: $logfile)"
		# -w waits for startup; -t bounds that wait.
		as_owner "$bin/pg_ctl" -D "$data" -l "$logfile" -w -t 60 start >&2 ||
			{ tail -n 30 "$logfile" >&2 || true; die "pg_ctl start failed"; }
	fi

	local i
	for ((i = 0; i < 60; i++)); do
		if "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres; then
			printf 'postgres://postgres@127.0.0.1:%s/postgres?sslmode=disable\n' "$port"
			return 0
		fi
		sleep 0.5
	done
	tail -n 30 "$logfile" >&2 || true
	die "server in $data not ready on 127.0.0.1:$port after 30s"
}

stop() {
	local dir=$1
	local data=$dir/data
	if [[ ! -s "$data/PG_VERSION" ]]; then
		log "no cluster in $dir; nothing to stop"
		return 0
	fi
	local bin
	bin=$(bindir)
	if ! as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
		log "not running in $data"
		return 0
	fi
	# fast: roll back open transactions and stop; -t bounds the wait.
	as_owner "$bin/pg_ctl" -D "$data" -m "${2:-fast}" -w -t 60 stop >&2
}

[[ $# -ge 1 ]] || usage
case $1 in
start)
	[[ $# -eq 3 ]] || usage
	start "$2" "$3"
	;;
stop)
	[[ $# -eq 2 ]] || usage
	stop "$2"
	;;
crash)
	# immediate: every server process quits at once, without a checkpoint; the next start
	# replays the WAL, as after a power cut.
	[[ $# -eq 2 ]] || usage
	stop "$2" immediate
	;;
*) usage ;;
esac
