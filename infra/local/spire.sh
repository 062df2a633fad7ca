#!/usr/bin/env bash
# Throw-away SPIRE (server + agent) on loopback, for tests and local runs.
#
#   infra/local/spire.sh build                          # build and cache the binaries if absent
#   infra/local/spire.sh start DIR                      # prints the Workload API address
#   infra/local/spire.sh register DIR SPIFFE_ID SELECTOR...   # prints the entry ID
#   infra/local/spire.sh stop DIR                       # safe to call twice
#
# Trust domain securepay.dev; X.509-SVIDs live ${SPIRE_X509_SVID_TTL:-2m} (the agent
# rotates them at half-life, so a test of a few minutes sees rotations). The agent is
# attested with a join token and its node entry is spiffe://securepay.dev/node1, the
# parent of every entry `register` creates.
#
# Distinct identities on one host, for one uid: the agent's unix workload attestor runs
# with discover_workload_path = true, so `unix:path:/abs/path/of/binary` selects a
# process by its executable. Give each identity its own copy of the binary (same bytes,
# another path) and register that path. `unix:uid:N` works when identities run as
# different users; `unix:sha256:` cannot tell copies apart.
#
# Binaries: ${SECUREPAY_CACHE:-$HOME/.cache/securepay}/spire-v1.13.3/bin/{spire-server,spire-agent},
# built from the Go module proxy on first use (about 12 minutes on a busy 2-core machine).
set -euo pipefail

readonly SPIRE_VERSION=v1.13.3
readonly TRUST_DOMAIN=securepay.dev
readonly NODE_ID=spiffe://$TRUST_DOMAIN/node1
CACHE=${SECUREPAY_CACHE:-$HOME/.cache/securepay}
BIN=$CACHE/spire-$SPIRE_VERSION/bin

log() { printf 'spire.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

build() {
	if [[ -x $BIN/spire-server && -x $BIN/spire-agent ]]; then
		return 0
	fi
	command -v go >/dev/null || die "go is required to build SPIRE $SPIRE_VERSION"
	mkdir -p "$BIN"
	# One build at a time per cache: a second caller waits for the first.
	exec 9>"$CACHE/spire-$SPIRE_VERSION.lock"
	flock 9
	if [[ -x $BIN/spire-server && -x $BIN/spire-agent ]]; then
		return 0
	fi
	log "building SPIRE $SPIRE_VERSION from the Go module proxy into $BIN (takes minutes)"
	local work
	work=$(mktemp -d)
	(
		cd "$work"
		printf 'module securepay.local/spire-build\n\ngo 1.26.0\n' >go.mod
		# The checksum database refuses this one module of SPIRE's dependency graph.
		export GONOSUMDB=github.com/GoogleCloudPlatform/cloudsql-proxy GOFLAGS=-mod=mod
		go get -tool "github.com/spiffe/spire/cmd/spire-server@$SPIRE_VERSION" "github.com/spiffe/spire/cmd/spire-agent@$SPIRE_VERSION" >&2
		go build -o "$work/bin/" github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent >&2
	) || { rm -rf "$work"; die "building SPIRE failed"; }
	mv "$work/bin/spire-server" "$work/bin/spire-agent" "$BIN/"
	rm -rf "$work"
	exec 9>&-
}

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_for SECONDS CMD...: run CMD until it succeeds, at most SECONDS.
wait_for() {
	local secs=$1
	shift
	for _ in $(seq 1 $((secs * 5))); do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 0.2
	done
	return 1
}

# failed_start DIR MESSAGE: a half-started SPIRE leaves no process behind.
failed_start() {
	stop "$1"
	die "$2"
}

start() {
	local dir=$1
	build
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	[[ ! -f $dir/server.pid ]] || die "$dir already holds a SPIRE (stop it first)"
	# A unix socket path is at most 107 bytes.
	((${#dir} <= 90)) || die "DIR '$dir' is too long for unix socket paths; use a shorter one"
	local ttl=${SPIRE_X509_SVID_TTL:-2m} port
	[[ $ttl =~ ^[0-9]+[smh]$ ]] || die "SPIRE_X509_SVID_TTL must look like 2m, 90s or 1h, got '$ttl'"
	port=$(free_port)
	mkdir -p "$dir/server" "$dir/agent"

	cat >"$dir/server.conf" <<CONF
server {
  bind_address = "127.0.0.1"
  bind_port = "$port"
  socket_path = "$dir/server.sock"
  trust_domain = "$TRUST_DOMAIN"
  data_dir = "$dir/server"
  log_level = "WARN"
  default_x509_svid_ttl = "$ttl"
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = "$dir/server/datastore.sqlite3"
    }
  }
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "disk" {
    plugin_data {
      keys_path = "$dir/server/keys.json"
    }
  }
}
CONF
	"$BIN/spire-server" run -config "$dir/server.conf" >"$dir/server.log" 2>&1 &
	echo $! >"$dir/server.pid"
	wait_for 60 "$BIN/spire-server" healthcheck -socketPath "$dir/server.sock" ||
		failed_start "$dir" "spire-server not healthy within 60s (log: $dir/server.log)"

	local token
	token=$("$BIN/spire-server" token generate -socketPath "$dir/server.sock" -spiffeID "$NODE_ID" -ttl 600 |
		awk '/^Token:/ {print $2}')
	[[ -n $token ]] || failed_start "$dir" "no join token from spire-server"

	cat >"$dir/agent.conf" <<CONF
agent {
  data_dir = "$dir/agent"
  log_level = "WARN"
  server_address = "127.0.0.1"
  server_port = "$port"
  socket_path = "$dir/agent.sock"
  trust_domain = "$TRUST_DOMAIN"
  # Test only: the agent trusts the server's first answer instead of a pinned bundle.
  insecure_bootstrap = true
  experimental {
    # New registration entries reach workloads within a couple of seconds.
    sync_interval = "2s"
  }
}
plugins {
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "disk" {
    plugin_data {
      directory = "$dir/agent"
    }
  }
  WorkloadAttestor "unix" {
    plugin_data {
      # Adds the unix:path and unix:sha256 selectors: identities by executable.
      discover_workload_path = true
    }
  }
}
CONF
	"$BIN/spire-agent" run -config "$dir/agent.conf" -joinToken "$token" >"$dir/agent.log" 2>&1 &
	echo $! >"$dir/agent.pid"
	wait_for 60 "$BIN/spire-agent" healthcheck -socketPath "$dir/agent.sock" ||
		failed_start "$dir" "spire-agent not healthy within 60s (log: $dir/agent.log)"
	printf 'unix://%s\n' "$dir/agent.sock" | tee "$dir/workload-api"
}

register() {
	local dir=$1 id=$2
	shift 2
	[[ -S $dir/server.sock ]] || die "no SPIRE server in $dir (start it first)"
	[[ $id == spiffe://$TRUST_DOMAIN/* ]] || die "SPIFFE_ID must be spiffe://$TRUST_DOMAIN/..., got '$id'"
	local args=() sel
	for sel in "$@"; do
		[[ $sel == *:*:* ]] || die "selector must look like type:key:value (unix:path:/abs/bin), got '$sel'"
		args+=(-selector "$sel")
	done
	# Idempotent: an identical entry already there is the answer.
	local existing
	existing=$("$BIN/spire-server" entry show -socketPath "$dir/server.sock" -parentID "$NODE_ID" \
		-spiffeID "$id" "${args[@]}" | awk '/^Entry ID/ {print $NF; exit}')
	if [[ -n $existing ]]; then
		echo "$existing"
		return 0
	fi
	"$BIN/spire-server" entry create -socketPath "$dir/server.sock" -parentID "$NODE_ID" \
		-spiffeID "$id" "${args[@]}" | awk '/^Entry ID/ {print $NF}'
}

stop_pid() {
	local file=$1
	[[ -f $file ]] || return 0
	local pid
	pid=$(cat "$file")
	kill "$pid" 2>/dev/null || true
	for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	kill -9 "$pid" 2>/dev/null || true
	rm -f "$file"
}

stop() {
	local dir=$1
	stop_pid "$dir/agent.pid"
	stop_pid "$dir/server.pid"
}

case "${1:-}" in
build) [[ $# -eq 1 ]] || die "usage: spire.sh build"; build ;;
start) [[ $# -eq 2 ]] || die "usage: spire.sh start DIR"; start "$2" ;;
register) [[ $# -ge 4 ]] || die "usage: spire.sh register DIR SPIFFE_ID SELECTOR..."; register "${@:2}" ;;
stop) [[ $# -eq 2 ]] || die "usage: spire.sh stop DIR"; stop "$2" ;;
*) die "usage: spire.sh build | start DIR | register DIR SPIFFE_ID SELECTOR... | stop DIR" ;;
esac
