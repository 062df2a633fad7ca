#!/usr/bin/env bash
# Throw-away Redis for tests and local runs.
#
#   infra/local/redis.sh start DIR PORT   # prints host:port on stdout
#   infra/local/redis.sh stop DIR         # safe to call twice
#
# No persistence (--save '' --appendonly no), loopback only. Installs Debian's
# redis-server when it is missing.
set -euo pipefail

log() { printf 'redis.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

server() {
	if ! command -v redis-server >/dev/null 2>&1; then
		log "redis-server not found; installing it with apt-get"
		[[ $(id -u) -eq 0 ]] || die "redis-server is not installed and we are not root: apt-get install -y redis-server"
		apt-get update >&2
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server >&2
	fi
	command -v redis-server
}

start() {
	local dir=$1 port=$2
	[[ "$port" =~ ^[0-9]+$ ]] && ((port > 0 && port < 65536)) || die "PORT must be 1..65535, got '$port'"
	local bin
	bin=$(server)
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	"$bin" --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
		--dir "$dir" --logfile "$dir/redis.log" --pidfile "$dir/redis.pid" >&2
	for _ in $(seq 1 100); do
		if redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then
			echo "$port" >"$dir/port"
			printf '127.0.0.1:%s\n' "$port"
			return 0
		fi
		sleep 0.1
	done
	die "redis did not answer PING on 127.0.0.1:$port within 10s (log: $dir/redis.log)"
}

stop() {
	local dir=$1
	[[ -f "$dir/port" ]] || return 0
	local port
	port=$(cat "$dir/port")
	redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
	if [[ -f "$dir/redis.pid" ]]; then
		local pid
		pid=$(cat "$dir/redis.pid")
		for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$pid" 2>/dev/null || true
	fi
	rm -f "$dir/port"
}

case "${1:-}" in
start) [[ $# -eq 3 ]] || die "usage: redis.sh start DIR PORT"; start "$2" "$3" ;;
stop) [[ $# -eq 2 ]] || die "usage: redis.sh stop DIR"; stop "$2" ;;
*) die "usage: redis.sh start DIR PORT | stop DIR" ;;
esac
