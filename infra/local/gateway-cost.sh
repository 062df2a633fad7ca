#!/usr/bin/env bash
# What the gateway costs, each part in a process of its own (docs/PERFORMANCE.md, "What
# the gateway costs"):
#
#   infra/local/gateway-cost.sh OUT [ROUNDS]
#
# runs, ROUNDS times (default 2), interleaved and alternating which goes first:
#   direct   securepay loadtest -> securepay serve payments (TLS, no caller authentication,
#            loopback only: the payments component called directly)
#   gateway  securepay loadtest -> securepay serve gateway (TLS, JWT, policy, rate limit
#            in Redis) -> securepay serve payments (SPIFFE mTLS with SVIDs from a real
#            SPIRE agent, the component's policy)
# on one PostgreSQL and one Redis, and prints per run the transfers/s, p50/p99, and the
# CPU per transfer (user + system) of each process: payments, gateway, PostgreSQL (the
# postmaster and its backends), Redis, and the load generator itself. Every run's full
# report is kept in OUT (RUN.json) with the servers' logs.
#
# Environment: SECUREPAY_BIN (a securepay binary; default: built from this checkout into
# OUT), CALLERS (64 in a closed loop), RATE (an open loop of this many transfers/s instead:
# both paths then do the same work, so that their CPU per transfer carries the same
# share of the processes' idle work), ACCOUNTS (64, as BenchmarkTransfer; one token lists them all, at most 256), WARMUP (5s), DURATION
# (20s), PORT_BASE (27400: eight consecutive loopback ports from there), PROFILE (a number
# of seconds: take a CPU profile of payments and of the gateway that long, starting after
# the warm-up, into OUT/RUN-payments.pprof and OUT/RUN-gateway.pprof, and the load
# generator's own of the whole run into OUT/RUN-loadtest.pprof; read them with
# `go tool pprof -top BINARY FILE`), ONLY (direct or gateway: run only that path), PIN
# (1: the ledger side, payments + PostgreSQL + Redis, on CPU 0 and the caller side, the
# load generator and the gateway, on CPU 1, with taskset: the gateway then spends CPU of
# its own, as gateways on machines of their own do, instead of the ledger's; the
# throughput ratio then says what the hop and the checks cost the ledger. Without PIN
# every process shares every core, and the gateway's CPU is taken from the ledger.),
# SYSCALLS (1: also the system calls per transfer of each process, see sample_syscalls),
# HOP_BATCH (true or false: the gateway's --hop-batch, whether its calls to payments that
# arrive together travel in one HopService.Forward; unset: the binary's default, and no
# flag, so that a binary from before the flag runs too).
# Needs what the test command needs (PostgreSQL, Redis, the cached SPIRE binaries), plus
# openssl, curl, jq and python3 (the issuer's key set over HTTPS).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:?usage: gateway-cost.sh OUT [ROUNDS]}
rounds=${2:-2}
callers=${CALLERS:-64}
rate=${RATE:-}
if [[ -n $rate ]]; then load=(--rate "$rate"); else load=(--concurrency "$callers"); fi
accounts=${ACCOUNTS:-64}
warmup=${WARMUP:-5s}
duration=${DURATION:-20s}
base=${PORT_BASE:-27400}
pg_port=$base redis_port=$((base + 1)) pay_port=$((base + 2)) pay_health=$((base + 3))
gw_port=$((base + 4)) jwks_port=$((base + 5)) pay_pprof=$((base + 6)) gw_pprof=$((base + 7))
profile=${PROFILE:-}

log() { printf 'gateway-cost.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
((accounts >= 1 && accounts <= 254)) || die "ACCOUNTS must be 1..254: one token lists the run's accounts, at most 256"

mkdir -p "$out"
out=$(cd "$out" && pwd)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	bash "$root/infra/local/spire.sh" stop "$out/spire" >/dev/null 2>&1 || true
	bash "$root/infra/local/redis.sh" stop "$out/redis" >/dev/null 2>&1 || true
	bash "$root/infra/local/postgres.sh" stop "$out/pg" >/dev/null 2>&1 || true
	# The reports stay; the databases and the binaries' copies (hundreds of MB) go.
	rm -rf "$out/pg/data" "$out/redis" "$out/spire" "$out/devdata"
	rm -f "$out"/securepay-*
}
trap cleanup EXIT

bin=${SECUREPAY_BIN:-}
if [[ -z $bin ]]; then
	log "building securepay"
	(cd "$root" && go build -o "$out/securepay" ./cmd/securepay)
	bin=$out/securepay
fi
# SPIRE tells workloads apart by their executable's path (infra/local/spire.sh): a copy
# of the same binary per identity.
cp "$bin" "$out/securepay-gateway"
cp "$bin" "$out/securepay-payments"
cp "$bin" "$out/securepay-direct"
bin=$out/securepay-direct

# PostgreSQL, with the serving role migrate grants (serve refuses the owner's).
owner_dsn=$(bash "$root/infra/local/postgres.sh" start "$out/pg" "$pg_port")
psql "$owner_dsn" -qc 'CREATE ROLE gwcost_serve LOGIN' >/dev/null
umask 077
printf '%s\n' "$owner_dsn" >"$out/owner.dsn"
printf '%s\n' "${owner_dsn/postgres:\/\/postgres@/postgres://gwcost_serve@}" >"$out/serve.dsn"
umask 022
"$bin" migrate --postgres-dsn-file "$out/owner.dsn" --serve-role gwcost_serve >"$out/migrate.log" 2>&1 || die "migrate failed: $(cat "$out/migrate.log")"
redis_addr=$(bash "$root/infra/local/redis.sh" start "$out/redis" "$redis_port")
postmaster=$(head -1 "$out/pg/data/postmaster.pid")
redis_pid=$(cat "$out/redis/redis.pid")
pin_ledger=() pin_caller=()
if [[ ${PIN:-} == 1 ]]; then
	(($(nproc) >= 2)) || die "PIN=1 needs two CPUs"
	command -v taskset >/dev/null || die "PIN=1 needs taskset (util-linux)"
	pin_ledger=(taskset -c 0) pin_caller=(taskset -c 1)
	# PostgreSQL's backends are forked from the postmaster, so they inherit CPU 0.
	for p in "$postmaster" $(pgrep -P "$postmaster") "$redis_pid"; do taskset -a -p -c 0 "$p" >/dev/null; done
fi

# SPIRE: the gateway's and the payments component's SVIDs.
sock=$(bash "$root/infra/local/spire.sh" start "$out/spire")
bash "$root/infra/local/spire.sh" register "$out/spire" spiffe://securepay.dev/gateway "unix:path:$out/securepay-gateway" >/dev/null
bash "$root/infra/local/spire.sh" register "$out/spire" spiffe://securepay.dev/payments "unix:path:$out/securepay-payments" >/dev/null

# The public TLS certificate (gateway, direct payments, the issuer's key set).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=127.0.0.1 \
	-addext subjectAltName=IP:127.0.0.1 -keyout "$out/key.pem" -out "$out/cert.pem" 2>/dev/null

# The token issuer: securepay dev's development key (securepay dev token signs with it);
# its public key set (RFC 7517, kid as dev names it: "dev-" and the first 12 bytes of the
# RFC 7638 thumbprint, base64url) served over HTTPS, as serve gateway fetches JWKS over
# https only.
mkdir -p "$out/jwks"
"$bin" dev token --key-file "$out/token-key.pem" --role auditor >"$out/probe.token"
python3 - "$out/token-key.pem" "$out/probe.token" >"$out/jwks/jwks.json" <<'EOF'
import base64, hashlib, json, sys
from cryptography.hazmat.primitives.serialization import load_pem_private_key
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
pub = load_pem_private_key(open(sys.argv[1], "rb").read(), None).public_key().public_numbers()
x, y = b64(pub.x.to_bytes(32, "big")), b64(pub.y.to_bytes(32, "big"))
thumb = hashlib.sha256(json.dumps({"crv": "P-256", "kty": "EC", "x": x, "y": y}, separators=(",", ":")).encode()).digest()
kid = "dev-" + b64(thumb[:12])
hdr = json.loads(base64.urlsafe_b64decode(open(sys.argv[2]).read().split(".")[0] + "=="))
if hdr.get("kid") != kid:
	sys.exit(f"the key set's kid {kid} is not the tokens' {hdr.get('kid')}")
json.dump({"keys": [{"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "alg": "ES256", "use": "sig"}]}, sys.stdout)
EOF
python3 - "$out/jwks" "$jwks_port" "$out/cert.pem" "$out/key.pem" >"$out/jwks.log" 2>&1 <<'EOF' &
import functools, http.server, ssl, sys
d, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(http.server.SimpleHTTPRequestHandler, directory=d))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
EOF
pids+=("$!")

wait_ready() { # URL WHAT PID
	for _ in $(seq 150); do
		curl -sfk --cacert "$out/cert.pem" "$1" >/dev/null 2>&1 && return 0
		kill -0 "$3" 2>/dev/null || die "$2 exited: $(tail -5 "$out/$2.log")"
		sleep 0.2
	done
	die "$2 not ready: $(tail -5 "$out/$2.log")"
}

start_payments() { # direct|mtls
	local mode=$1 exe args=(serve payments --listen "127.0.0.1:$pay_port" --health-listen "127.0.0.1:$pay_health"
		--postgres-dsn-file "$out/serve.dsn" --redis-addr "$redis_addr")
	[[ -z $profile ]] || args+=(--pprof-listen "127.0.0.1:$pay_pprof")
	if [[ $mode == direct ]]; then
		exe=$out/securepay-direct
		args+=(--tls-cert "$out/cert.pem" --tls-key "$out/key.pem")
	else
		exe=$out/securepay-payments
		args+=(--spiffe-socket "$sock")
	fi
	"${pin_ledger[@]}" "$exe" "${args[@]}" >>"$out/payments.log" 2>&1 &
	pay_pid=$!
	pids+=("$pay_pid")
	wait_ready "http://127.0.0.1:$pay_health/readyz" payments "$pay_pid"
}

start_gateway() {
	SSL_CERT_FILE=$out/cert.pem "${pin_caller[@]}" "$out/securepay-gateway" serve gateway --listen "127.0.0.1:$gw_port" \
		--tls-cert "$out/cert.pem" --tls-key "$out/key.pem" --spiffe-socket "$sock" \
		--payments-url "https://127.0.0.1:$pay_port" --queries-url "https://127.0.0.1:$pay_port" --audit-url "https://127.0.0.1:$pay_port" \
		--oidc-issuer urn:securepay:dev-issuer --oidc-audience securepay-dev --oidc-algorithms ES256 \
		--oidc-jwks-url "https://127.0.0.1:$jwks_port/jwks.json" --redis-addr "$redis_addr" \
		--rate-limit 1000000 --rate-burst 1000000 ${profile:+--pprof-listen "127.0.0.1:$gw_pprof"} \
		${HOP_BATCH:+--hop-batch="$HOP_BATCH"} >>"$out/gateway.log" 2>&1 &
	gw_pid=$!
	pids+=("$gw_pid")
	wait_ready "https://127.0.0.1:$gw_port/healthz" gateway "$gw_pid"
}

# SYSCALLS=1: the read and write system calls per transfer of each process (from
# /proc/PID/io, syscr and syscw), counted from a second after the warm-up to a second
# before the end (the load generator's setup takes less than that), divided by the run's
# transfers/s; into OUT/RUN.io and the summary.
syscalls=${SYSCALLS:-}
sample_secs=$((${duration%s} - 2))
sample_syscalls() { # ID NAME:PID...
	local id=$1
	shift
	sleep $((${warmup%s} + 1))
	for np in "$@"; do awk '/^sysc[rw]:/ { printf " %s", $2 } END { print "" }' "/proc/${np#*:}/io" >"$out/$id.io0.${np%%:*}"; done
	sleep "$sample_secs"
	: >"$out/$id.io"
	for np in "$@"; do
		read -r r0 w0 <"$out/$id.io0.${np%%:*}"
		read -r r1 w1 < <(awk '/^sysc[rw]:/ { printf " %s", $2 } END { print "" }' "/proc/${np#*:}/io")
		printf '%s-write %s %s\n%s-read %s %s\n' "${np%%:*}" "$w0" "$w1" "${np%%:*}" "$r0" "$r1" >>"$out/$id.io"
		rm -f "$out/$id.io0.${np%%:*}"
	done
}

stop() { # PID...
	for p in "$@"; do
		kill "$p" 2>/dev/null || true
		while kill -0 "$p" 2>/dev/null; do sleep 0.1; done
	done
}

run() { # direct|gateway ROUND
	local path=$1 id="$1$2" procs=()
	gw_pid=0
	if [[ $path == direct ]]; then
		start_payments direct
		procs=(--process "$pay_pid")
		target=(--server "https://127.0.0.1:$pay_port")
	else
		start_payments mtls
		start_gateway
		local owned="$id-world,$id-merchant"
		for ((i = 0; i < accounts; i++)); do owned+=",$id-p$i"; done
		"$bin" dev token --key-file "$out/token-key.pem" --role operator,customer --account "$owned" --subject "loadtest-$id" >"$out/$id.token"
		procs=(--process "$gw_pid" --process "$pay_pid")
		target=(--server "https://127.0.0.1:$gw_port" --token-file "$out/$id.token")
	fi
	log "$id: load average $(cut -d' ' -f1-3 /proc/loadavg)${PIN:+, pinned: ledger on CPU 0, callers on CPU 1}${HOP_BATCH:+, --hop-batch=$HOP_BATCH}"
	if [[ -n $profile ]]; then
		local ports=("payments:$pay_pprof")
		[[ $path == direct ]] || ports+=("gateway:$gw_pprof")
		for pp in "${ports[@]}"; do
			(sleep "${warmup%s}" && curl -sf -o "$out/$id-${pp%%:*}.pprof" "http://127.0.0.1:${pp#*:}/debug/pprof/profile?seconds=$profile") &
		done
	fi
	"${pin_caller[@]}" "$bin" loadtest "${target[@]}" --ca-file "$out/cert.pem" "${procs[@]}" --process "$postmaster" --process "$redis_pid" \
		--run-id "$id" --accounts "$accounts" "${load[@]}" --warmup "$warmup" --duration "$duration" \
		${profile:+--cpu-profile "$out/$id-loadtest.pprof"} --json >"$out/$id.json" &
	local lt_pid=$! sampler=
	if [[ -n $syscalls ]]; then
		local sampled=("loadtest:$lt_pid" "payments:$pay_pid")
		[[ $path == direct ]] || sampled+=("gateway:$gw_pid")
		sample_syscalls "$id" "${sampled[@]}" &
		sampler=$!
	fi
	wait "$lt_pid"
	[[ -z $sampler ]] || wait "$sampler"
	cut -d' ' -f1-3 /proc/loadavg >"$out/$id.loadavg"
	if [[ $path == direct ]]; then stop "$pay_pid"; else stop "$gw_pid" "$pay_pid"; fi
	local names="{\"pid $pay_pid\":\"payments\",\"pid ${gw_pid:-0}\":\"gateway\",\"pid $postmaster\":\"postgres\",\"pid $redis_pid\":\"redis\"}"
	jq -r --arg id "$id" --arg load "$(cat "$out/$id.loadavg")" --argjson names "$names" '
		(.writes) as $w |
		def us(s): if $w > 0 then (s * 1e6 / $w | floor) else "-" end;
		([.processes[] | {key: ($names[.process] // .process), value: us(.cpu_seconds)}] | from_entries) as $p |
		"\($id)\tload \($load)\t\(.writes_per_second | floor)/s\tp50 \(.latency.p50_ms) ms\tp99 \(.latency.p99_ms) ms\terrors \(.errors | add // 0)\tCPU µs/transfer: \($p | to_entries | map("\(.key)=\(.value)") | join(" "))\tloadtest=\(us(.client_cpu_seconds))"' "$out/$id.json" | tee -a "$out/summary.tsv"
	[[ -z $syscalls ]] || awk -v id="$id" -v w="$(jq .writes_per_second "$out/$id.json")" '
		BEGIN { printf "%s\tsyscalls/transfer:", id }
		{ printf " %s=%.2f", $1, ($3 - $2) / secs / w }
		END { print "" }' secs="$sample_secs" "$out/$id.io" | tee -a "$out/summary.tsv"
}

log "processes: postgres $postmaster, redis $redis_pid; $rounds rounds of ${load[*]}, $accounts accounts, $warmup + $duration"
for ((r = 1; r <= rounds; r++)); do
	case ${ONLY:-} in
	direct | gateway) run "$ONLY" "$r" ;;
	*) if ((r % 2)); then run direct "$r"; run gateway "$r"; else run gateway "$r"; run direct "$r"; fi ;;
	esac
done
