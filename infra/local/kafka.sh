#!/usr/bin/env bash
# Throw-away Apache Kafka broker (KRaft, one node) for tests and local runs.
#
#   infra/local/kafka.sh start DIR   # prints the bootstrap address host:port on stdout
#   infra/local/kafka.sh stop DIR    # safe to call twice, or on a DIR never started
#
# Kafka 4.1.1 runs on the JDK (17 or later) from its jars on Maven Central, fetched once
# with Maven and cached by version in ${SECUREPAY_CACHE:-~/.cache/securepay}/kafka-4.1.1/lib.
# DIR holds everything of one broker: server.properties, data/ (the log and the KRaft
# metadata), broker.log and broker.pid. The broker listens on two free ports of 127.0.0.1
# (clients and its own controller), picked at the first start and kept in DIR, so that
# `stop DIR` then `start DIR` brings the same broker back with its data on the same address
# (tests stop and restart a broker under a running producer). Replication factors are 1:
# this is a test broker, never put data you care about in it.
# Progress goes to stderr so that `ADDR=$(kafka.sh start DIR)` captures only the address.
set -euo pipefail

KAFKA_VERSION=4.1.1
SCALA_VERSION=2.13
# How long a start may take before we give up: the broker listens within ~30 s on a busy
# two-core machine, a cold JVM on a heavily loaded one needs more.
START_TIMEOUT_SECONDS=${SECUREPAY_KAFKA_START_TIMEOUT:-120}

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
	cat >&2 <<'EOF'
usage: kafka.sh start DIR
       kafka.sh stop DIR
EOF
	exit 2
}

cache_dir() {
	printf '%s/kafka-%s\n' "${SECUREPAY_CACHE:-$HOME/.cache/securepay}" "$KAFKA_VERSION"
}

# java_bin finds a JDK of version 17 or later (Kafka 4 brokers need it), installing
# Debian's when there is none and we are root.
java_bin() {
	if ! command -v java >/dev/null 2>&1; then
		log "java not found; installing a JDK with apt-get"
		[[ $(id -u) -eq 0 ]] || die "java 17+ is not installed and we are not root: apt-get install -y openjdk-17-jre-headless"
		apt-get update >&2
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openjdk-17-jre-headless >&2
	fi
	local v
	# `java -version` prints e.g. openjdk version "17.0.15" 2025-04-15 (or "1.8.0_..." for 8).
	v=$(java -version 2>&1 | sed -n -E '1s/.*version "([0-9]+)(\.[0-9]+)*.*/\1/p')
	[[ "$v" =~ ^[0-9]+$ ]] && ((v >= 17)) || die "Kafka $KAFKA_VERSION needs java 17 or later; $(command -v java) is version '${v:-unknown}'"
	command -v java
}

# jars makes sure the broker's jars are in the cache and prints their directory. The cache
# entry appears atomically (a rename), so an interrupted fetch leaves nothing half-done.
jars() {
	local dest lib
	dest=$(cache_dir)
	lib=$dest/lib
	if [[ -f "$lib/kafka_$SCALA_VERSION-$KAFKA_VERSION.jar" ]]; then
		printf '%s\n' "$lib"
		return 0
	fi
	if ! command -v mvn >/dev/null 2>&1; then
		log "mvn not found; installing Maven with apt-get"
		[[ $(id -u) -eq 0 ]] || die "Maven is needed once to fetch the Kafka jars and we are not root: apt-get install -y maven"
		apt-get update >&2
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends maven >&2
	fi
	log "fetching Kafka $KAFKA_VERSION jars from Maven Central into $lib (once; a few minutes)"
	mkdir -p "$(dirname "$dest")"
	local work
	work=$(mktemp -d "$(dirname "$dest")/kafka-fetch.XXXXXX")
	# One dependency, the broker; Maven resolves the rest (about 45 jars, 43 MB).
	cat >"$work/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.securepay.local</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>$KAFKA_VERSION</version>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_$SCALA_VERSION</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
	if ! (cd "$work" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=lib >"$work/mvn.log" 2>&1); then
		tail -n 20 "$work/mvn.log" >&2 || true
		rm -rf "$work"
		die "could not fetch org.apache.kafka:kafka_$SCALA_VERSION:$KAFKA_VERSION and its dependencies from Maven Central (https://repo.maven.apache.org/maven2) with mvn; Kafka cannot start without them. Check that Maven Central (or your Maven mirror in ~/.m2/settings.xml) is reachable, or copy a kafka-$KAFKA_VERSION/lib from another machine into $(dirname "$dest")"
	fi
	[[ -f "$work/lib/kafka_$SCALA_VERSION-$KAFKA_VERSION.jar" ]] || { rm -rf "$work"; die "mvn succeeded but fetched no kafka_$SCALA_VERSION-$KAFKA_VERSION.jar"; }
	mkdir -p "$dest"
	if ! mv -T "$work/lib" "$lib" 2>/dev/null; then
		# Another start fetched them at the same time: theirs are as good as ours.
		[[ -f "$lib/kafka_$SCALA_VERSION-$KAFKA_VERSION.jar" ]] || { rm -rf "$work"; die "could not move the fetched jars into $lib"; }
	fi
	rm -rf "$work"
	log "$(find "$lib" -name '*.jar' | wc -l) jars in $lib"
	printf '%s\n' "$lib"
}

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

running() {
	local dir=$1
	[[ -f "$dir/broker.pid" ]] && kill -0 "$(cat "$dir/broker.pid")" 2>/dev/null
}

accepts() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
	local dir=$1
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	local java lib
	java=$(java_bin)
	lib=$(jars)
	if running "$dir"; then
		log "already running in $dir"
		printf '127.0.0.1:%s\n' "$(cat "$dir/port")"
		return 0
	fi
	if [[ ! -f "$dir/server.properties" ]]; then
		local port cport
		port=$(free_port)
		cport=$(free_port)
		while [[ "$cport" == "$port" ]]; do cport=$(free_port); done
		cat >"$dir/server.properties" <<EOF
# written by infra/local/kafka.sh: one KRaft node that is broker and controller
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=5
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=5
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
EOF
		echo "$port" >"$dir/port"
		log "formatting $dir/data (KRaft, node 1)"
		local id
		id=$("$java" -cp "$lib/*" kafka.tools.StorageTool random-uuid 2>>"$dir/broker.log") || die "StorageTool random-uuid failed (log: $dir/broker.log)"
		# The voters are set in the properties, so no --standalone.
		"$java" -cp "$lib/*" kafka.tools.StorageTool format -t "$id" -c "$dir/server.properties" >>"$dir/broker.log" 2>&1 ||
			{ tail -n 20 "$dir/broker.log" >&2 || true; die "StorageTool format failed"; }
	fi
	local port
	port=$(cat "$dir/port")
	log "starting Kafka $KAFKA_VERSION on 127.0.0.1:$port (log: $dir/broker.log)"
	# setsid: the broker outlives this script and is not hit by the caller's Ctrl-C; stop
	# ends it by its pid.
	setsid "$java" -Xms256m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true \
		-cp "$lib/*" kafka.Kafka "$dir/server.properties" >>"$dir/broker.log" 2>&1 </dev/null &
	echo $! >"$dir/broker.pid"
	local i
	for ((i = 0; i < START_TIMEOUT_SECONDS * 4; i++)); do
		if accepts "$port"; then
			printf '127.0.0.1:%s\n' "$port"
			return 0
		fi
		if ! running "$dir"; then
			tail -n 30 "$dir/broker.log" >&2 || true
			rm -f "$dir/broker.pid"
			die "the broker exited during start (log: $dir/broker.log)"
		fi
		sleep 0.25
	done
	tail -n 30 "$dir/broker.log" >&2 || true
	stop "$dir"
	die "the broker did not accept connections on 127.0.0.1:$port within ${START_TIMEOUT_SECONDS}s"
}

stop() {
	local dir=$1
	if ! running "$dir"; then
		rm -f "$dir/broker.pid"
		return 0
	fi
	local pid i
	pid=$(cat "$dir/broker.pid")
	# TERM lets the broker close its log cleanly (a faster restart); bounded, then KILL.
	kill "$pid" 2>/dev/null || true
	for ((i = 0; i < 120; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.25
	done
	if kill -0 "$pid" 2>/dev/null; then
		log "broker $pid did not stop within 30s; killing it"
		kill -9 "$pid" 2>/dev/null || true
		for ((i = 0; i < 40; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.25
		done
	fi
	rm -f "$dir/broker.pid"
}

[[ $# -eq 2 ]] || usage
case $1 in
start) start "$2" ;;
stop) stop "$2" ;;
*) usage ;;
esac
