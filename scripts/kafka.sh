#!/usr/bin/env bash
# Run a real single-node Apache Kafka broker (KRaft, combined broker+controller)
# on loopback, from jars on Maven Central: no tarball mirror or Docker needed.
#
#   scripts/kafka.sh install|start|stop|status|wipe
#
# Env: SHOPSTREAM_KAFKA_HOME (jar cache), SHOPSTREAM_KAFKA_DATA (data, log, pid),
#      KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), KAFKA_HEAP_OPTS, JAVA_HOME;
#      KAFKA_SASL_PORT adds a SASL_PLAINTEXT listener (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)
#      for user KAFKA_SASL_USER (shopstream) with password KAFKA_SASL_PASSWORD.
set -euo pipefail

KAFKA_VERSION=4.4.0
POM="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/kafka/pom.xml"
KAFKA_HOME=${SHOPSTREAM_KAFKA_HOME:-$HOME/.cache/shopstream/kafka-$KAFKA_VERSION}
LIBS=$KAFKA_HOME/libs
DATA=${SHOPSTREAM_KAFKA_DATA:-/tmp/shopstream-kafka}
PORT=${KAFKA_PORT:-9092}
CPORT=${KAFKA_CONTROLLER_PORT:-9093}
BOOTSTRAP=127.0.0.1:$PORT
PIDFILE=$DATA/kafka.pid
LOG=$DATA/kafka.log
# Kafka 4.x needs Java 17+; prefer JAVA_HOME, then the Debian JDK 17, then PATH.
JAVA=${JAVA_HOME:-/usr/lib/jvm/java-17-openjdk-amd64}/bin/java
[[ -x $JAVA ]] || JAVA=java

say() { echo "kafka: $*" >&2; }
die() { say "$*"; exit 1; }

install() {
  # The marker holds the pom's checksum, so editing the pom forces a re-copy.
  local sum tmp
  sum=$(sha256sum "$POM" | cut -d' ' -f1)
  [[ -f $LIBS/.complete && $(<"$LIBS/.complete") == "$sum" ]] && return 0
  command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
  say "downloading jars from Maven Central into $LIBS ..."
  mkdir -p "$KAFKA_HOME"
  tmp=$KAFKA_HOME/libs.tmp.$$ # copy aside, then move: an interrupted run leaves no half-filled libs/
  rm -rf "$tmp"
  if ! mvn -q -B -f "$POM" dependency:copy-dependencies -DoutputDirectory="$tmp" \
      >"$KAFKA_HOME/mvn.log" 2>&1; then
    tail -n 30 "$KAFKA_HOME/mvn.log" >&2
    rm -rf "$tmp"
    die "maven failed (full log: $KAFKA_HOME/mvn.log)"
  fi
  echo "$sum" >"$tmp/.complete"
  rm -rf "$LIBS" && mv "$tmp" "$LIBS"
}

# JVM options for short-lived Kafka tools: small heap, fast JIT start, warnings only (stderr).
tool_opts() {
  TOOL=("$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 -Dshopstream.log.level=WARN
    -Dlog4j2.configurationFile="$DATA/log4j2.properties" -cp "$LIBS/*")
}

pid() { [[ -f $PIDFILE ]] && cat "$PIDFILE"; }

# A live kafka.Kafka JVM with this pid (guards against pid reuse; a zombie's
# cmdline is empty, so it counts as gone).
alive() { grep -qa 'kafka.Kafka' "/proc/$1/cmdline" 2>/dev/null; }

# The JVM of this data directory, found by its command line: the pid file can name a pid that
# setsid/nohup have not exec'd into the JVM yet, or that is gone while the broker runs.
broker_of_data() {
  local f p
  for f in /proc/[0-9]*/cmdline; do
    p=${f#/proc/}; p=${p%/cmdline}
    [[ $p == "$$" ]] && continue
    if tr '\0' ' ' <"$f" 2>/dev/null | grep -qF "kafka.Kafka $DATA/server.properties"; then
      echo "$p"; return 0
    fi
  done
  return 1
}

running() {
  local p
  p=$(pid) && [[ -n $p ]] && alive "$p" && return 0
  p=$(broker_of_data) || return 1
  echo "$p" >"$PIDFILE"
}

# Gone for good: no /proc entry, or a zombie (every thread has exited, every file is closed).
# A JVM's cmdline reads empty as soon as its main thread exits, while its other threads still
# hold its ports and the data directory's lock: a broker started then fails to start.
gone() { [[ ! -e /proc/$1 ]] || [[ $(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1) == Z ]]; }

# Wait (at most $1 s) for the broker and controller ports to be free.
ports_free() {
  local i
  for ((i = 0; i < $1; i++)); do
    port_open "$PORT" || port_open "$CPORT" || return 0
    sleep 1
  done
  ! port_open "$PORT" && ! port_open "$CPORT"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Answering = a real client gets metadata back, not just an open port.
answering() {
  port_open "$PORT" || return 1
  if python3 -c 'import kafka' 2>/dev/null; then
    timeout 15 python3 -c "
from kafka import KafkaAdminClient
a = KafkaAdminClient(bootstrap_servers='$BOOTSTRAP', request_timeout_ms=5000)
a.list_topics(); a.close()" >/dev/null 2>&1
  else
    tool_opts
    timeout 15 "${TOOL[@]}" org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" --list >/dev/null 2>&1
  fi
}

SASL_PORT=${KAFKA_SASL_PORT:-}
SASL_USER=${KAFKA_SASL_USER:-shopstream}
SASL_PASSWORD=${KAFKA_SASL_PASSWORD:-shopstream-secret}

write_configs() {
  mkdir -p "$DATA/logs"
  local listeners="PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT"
  local protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
  if [[ -n $SASL_PORT ]]; then
    listeners+=",SASL_PLAINTEXT://127.0.0.1:$SASL_PORT"
    protocols+=",SASL_PLAINTEXT:SASL_PLAINTEXT"
  fi
  # controller.quorum.bootstrap.servers (not .voters) + `format --standalone` is
  # the 4.x way to bootstrap a one-node dynamic KRaft quorum.
  cat >"$DATA/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CPORT
listeners=$listeners
advertised.listeners=$listeners
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=$protocols
log.dirs=$DATA/logs
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
  if [[ -n $SASL_PORT ]]; then
    # PLAIN users live in the JAAS line; SCRAM credentials are written at format time.
    cat >>"$DATA/server.properties" <<EOF
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$SASL_USER="$SASL_PASSWORD";
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
EOF
  fi
  # Kafka 4.x logs via log4j2; without a config it would print only errors.
  # shutdownHook=disable: log4j's own hook would otherwise stop logging while
  # Kafka is still shutting down on SIGTERM, hiding the end of the shutdown.
  cat >"$DATA/log4j2.properties" <<'EOF'
status = warn
shutdownHook = disable
appender.out.type = Console
appender.out.name = OUT
appender.out.target = SYSTEM_ERR
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = ${sys:shopstream.log.level:-INFO}
rootLogger.appenderRef.out.ref = OUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF
}

# Formats only once: the data dir (topics, offsets) survives restarts.
format_once() {
  [[ -f $DATA/logs/meta.properties ]] && return 0
  local id
  # A cluster id is 16 random bytes in url-safe base64; one starting with "-"
  # would be taken for a CLI flag, so draw again.
  while id=$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '='); [[ $id == -* ]]; do :; done
  say "formatting $DATA/logs (cluster id $id)"
  tool_opts
  local scram=()
  if [[ -n $SASL_PORT ]]; then
    scram=(--add-scram "SCRAM-SHA-256=[name=$SASL_USER,password=$SASL_PASSWORD]"
           --add-scram "SCRAM-SHA-512=[name=$SASL_USER,password=$SASL_PASSWORD]")
  fi
  "${TOOL[@]}" kafka.tools.StorageTool format --config "$DATA/server.properties" \
    --cluster-id "$id" --standalone "${scram[@]}" >>"$LOG" 2>&1 || { tail -n 20 "$LOG" >&2; die "format failed"; }
}

start() {
  if running; then
    answering && { say "already running on $BOOTSTRAP (pid $(pid))"; return 0; }
    say "pid $(pid) is up but not answering yet; waiting"
  else
    install
    # A broker that just stopped may hold its ports a moment longer.
    ports_free 15 || die "port $PORT or $CPORT is taken by another process"
    write_configs
    format_once
    say "starting broker (log: $LOG)"
    # setsid: Ctrl-C on the caller must not reach the broker; nohup: survive
    # the caller's exit. setsid/nohup exec, so $! is the JVM's pid.
    # shellcheck disable=SC2086 # KAFKA_HEAP_OPTS is a list of JVM flags
    setsid nohup "$JAVA" ${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m} -XX:+UseG1GC \
      -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$DATA/log4j2.properties" \
      -cp "$LIBS/*" kafka.Kafka "$DATA/server.properties" >>"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
  fi
  local t0=$SECONDS
  while ((SECONDS - t0 < 60)); do
    # Twice, a second apart: while setsid and nohup exec into the JVM, /proc/<pid>/cmdline can
    # read empty for an instant (a CI run reported a live broker as "exited during startup");
    # `running` also finds the JVM by its command line.
    running || { sleep 1; running; } || { tail -n 40 "$LOG" >&2; rm -f "$PIDFILE"; die "broker exited during startup"; }
    answering && { say "started on $BOOTSTRAP (pid $(pid))"; return 0; }
    sleep 1
  done
  tail -n 40 "$LOG" >&2
  die "broker not answering on $BOOTSTRAP after 60 s (pid $(pid) left running; '$0 stop' ends it)"
}

stop() {
  if ! running; then rm -f "$PIDFILE"; say "not running"; return 0; fi
  local p i; p=$(pid)
  say "stopping pid $p"
  # SIGTERM triggers Kafka's clean shutdown (flushes logs, avoids recovery on next start).
  kill -TERM "$p" 2>/dev/null || true
  for ((i = 0; i < 30; i++)); do alive "$p" || break; sleep 1; done
  if alive "$p"; then
    say "no exit after 30 s, SIGKILL"
    kill -KILL "$p" 2>/dev/null || true
  fi
  # Stopped means gone: every thread exited, so its ports and the data directory's lock are free
  # for the next start (a start right after a stop failed to lock the data directory).
  for ((i = 0; i < 20; i++)); do gone "$p" && break; sleep 0.5; done
  ports_free 10 || say "port $PORT or $CPORT still taken after the broker stopped"
  rm -f "$PIDFILE"
  say "stopped"
}

status() {
  if running; then echo "kafka: running on $BOOTSTRAP (pid $(pid))"; else echo "kafka: not running"; return 1; fi
}

wipe() {
  stop
  [[ -n $DATA && $DATA != / ]] || die "refusing to delete '$DATA'"
  rm -rf "$DATA"
  say "deleted $DATA"
}

case ${1:-} in
  install) install; say "jars ready in $LIBS" ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  wipe) wipe ;;
  *) echo "usage: $0 install|start|stop|status|wipe" >&2; exit 2 ;;
esac
