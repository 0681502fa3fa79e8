#!/usr/bin/env bash
# The whole topology on one machine, in network namespaces, under load and under faults:
# client → HAProxy (PROXY v2, agent-check) → two `smtpfront serve` hosts → Redis primary +
# replica behind three Sentinels → two `smtpfront consume --maildir` consumers. Every message
# that got a 250 must reach a Maildir. Usage (as root): bash loadtest/topology/run.sh [--short]
# Prints one line per scenario (scenario=NAME sent=… acked=… delivered=… lost=… duplicates=…)
# and exits 1 when any acknowledged message was lost. See loadtest/topology/README.md.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SHORT=0
case "${1-}" in
    --short) SHORT=1 ;;
    "") ;;
    *) echo "usage: bash loadtest/topology/run.sh [--short]" >&2; exit 2 ;;
esac
if [ "$(id -u)" != 0 ]; then echo "run.sh: needs root (network namespaces)" >&2; exit 2; fi

# -- what it needs --------------------------------------------------------------------------
need=()
for pair in ip:iproute2 redis-server:redis-server redis-cli:redis-tools haproxy:haproxy ps:procps setsid:util-linux; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "== installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ -x "$ROOT/.venv/bin/smtpfront" ] || (cd "$ROOT" && bash deploy/install.sh dev)
PY=$ROOT/.venv/bin/python
SMTPFRONT=$ROOT/.venv/bin/smtpfront
TOPO=$HERE/topo.py

if [ $SHORT = 1 ]; then
    RATE=40 LOAD=16 LEAD=3 GRACE=20 WAIT=45
    SCENARIOS=(kill-host drain-host kill-redis-primary cut-redis kill-consumer)
else
    RATE=80 LOAD=40 LEAD=10 GRACE=30 WAIT=90
    SCENARIOS=(steady kill-host drain-host kill-redis-primary cut-redis kill-consumer)
fi

# -- names, addresses, clean-up ---------------------------------------------------------------
P="sft$$"                       # namespace prefix, unique per run
HUB="$P-hub"                    # the "switch": two bridges, brf (front) and brb (back)
NODES=(client lb host1 host2 redis1 redis2 sent1 sent2 sent3 cons1 cons2)
WORK=$(mktemp -d /tmp/topology.XXXXXX)
FRONT=10.77.0                   # client .10, HAProxy .20, hosts .31 .32
BACK=10.77.1                    # hosts .31 .32, redis .41 .42, sentinels .51-.53, consumers .61 .62
LB=$FRONT.20
declare -A ADDR=([redis1]=$BACK.41 [redis2]=$BACK.42)
SENTINELS="$BACK.51:26379,$BACK.52:26379,$BACK.53:26379"
QUEUE="redis+sentinel://$SENTINELS/mymaster/0"
declare -A PIDS=()
declare -A GEN=([cons1]=0 [cons2]=0)
RESULTS=()
FAILED=0
T_START=$SECONDS

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    disown -a 2>/dev/null || true  # no "Killed" line per process below
    for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
    for node in "${NODES[@]}"; do
        for pid in $(ip netns pids "$P-$node" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    done
    sleep 0.3
    for node in "${NODES[@]}"; do ip netns del "$P-$node" 2>/dev/null || true; done
    ip netns del "$HUB" 2>/dev/null || true
    rm -rf "/etc/netns/$P-lb"
    if [ "$rc" = 0 ] && [ "${KEEP_LOGS-0}" != 1 ]; then rm -rf "$WORK"; else echo "logs kept in $WORK" >&2; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say() { echo "[$(date -u +%H:%M:%S) +$((SECONDS - T_START))s] $*" >&2; }
in_ns() { local node=$1; shift; ip netns exec "$P-$node" "$@"; }
obs() { in_ns cons2 "$@"; }     # a look at Redis/Sentinel from the back network

# wait_until SECONDS WHAT COMMAND…: poll (0.2 s) until COMMAND succeeds; fail after SECONDS.
wait_until() {
    local limit=$1 what=$2; shift 2
    local end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $end ]; then say "timed out after ${limit}s: $what"; return 1; fi
        sleep 0.2
    done
}

alive() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) || return 1; [[ $s != Z* ]]; }

# start NAME NODE COMMAND…: in the node's namespace, in a process group of its own (PID = PGID).
start() {
    local name=$1 node=$2; shift 2
    ip netns exec "$P-$node" setsid "$@" >>"$WORK/$name.log" 2>&1 </dev/null &
    PIDS[$name]=$!
}

# -- the network ------------------------------------------------------------------------------
link() {  # link NODE BRIDGE DEV ADDRESS: a veth from the node to a bridge of the hub
    local node=$1 br=$2 dev=$3 addr=$4 hubdev="${2:2:1}-$1"
    ip -n "$HUB" link add "$hubdev" type veth peer name "$dev" netns "$P-$node"
    ip -n "$HUB" link set "$hubdev" master "$br" up
    ip -n "$P-$node" addr add "$addr/24" dev "$dev"
    ip -n "$P-$node" link set "$dev" up
}

say "namespaces $P-*, logs in $WORK"
ip netns add "$HUB"
ip -n "$HUB" link set lo up
for br in brf brb; do ip -n "$HUB" link add "$br" type bridge; ip -n "$HUB" link set "$br" up; done
for node in "${NODES[@]}"; do ip netns add "$P-$node"; ip -n "$P-$node" link set lo up; done
link client brf front $FRONT.10
link lb brf front $LB
for n in 1 2; do link "host$n" brf front "$FRONT.3$n"; link "host$n" brb back "$BACK.3$n"; done
link redis1 brb back "${ADDR[redis1]}"
link redis2 brb back "${ADDR[redis2]}"
for n in 1 2 3; do link "sent$n" brb back "$BACK.5$n"; done
for n in 1 2; do link "cons$n" brb back "$BACK.6$n"; done

# -- Redis, Sentinel ----------------------------------------------------------------------------
start_redis() {  # start_redis NODE [MASTER_ADDRESS]
    local node=$1
    mkdir -p "$WORK/$node"
    start "$node" "$node" redis-server --bind "${ADDR[$node]}" --port 6379 --protected-mode no --save "" \
        --appendonly no --dir "$WORK/$node" ${2:+--replicaof "$2" 6379}
}
master_addr() { obs timeout 5 redis-cli -h $BACK.51 -p 26379 --raw sentinel get-master-addr-by-name mymaster | head -1; }
replica_online() {  # the master at $1 has a replica that is online and caught up
    obs timeout 5 redis-cli -h "$1" --raw info replication | grep -q '^slave0:.*state=online'
}
sentinels_ready() {
    local n
    for n in 1 2 3; do
        obs timeout 5 redis-cli -h "$BACK.5$n" -p 26379 --raw sentinel ckquorum mymaster | grep -q '^OK 3 ' || return 1
        [ "$(obs timeout 5 redis-cli -h "$BACK.5$n" -p 26379 --raw sentinel master mymaster \
            | awk 'prev == "num-slaves" {print; exit} {prev = $0}')" -ge 1 ] || return 1
    done
}
start_redis redis1
start_redis redis2 "${ADDR[redis1]}"
for n in 1 2 3; do
    mkdir -p "$WORK/sent$n"
    cat >"$WORK/sent$n/sentinel.conf" <<EOF
bind $BACK.5$n
port 26379
protected-mode no
dir $WORK/sent$n
sentinel monitor mymaster ${ADDR[redis1]} 6379 2
sentinel down-after-milliseconds mymaster 1000
sentinel failover-timeout mymaster 10000
sentinel parallel-syncs mymaster 1
EOF
    start "sent$n" "sent$n" redis-server "$WORK/sent$n/sentinel.conf" --sentinel
done
wait_until 20 "the replica to sync" replica_online "${ADDR[redis1]}"
wait_until 30 "three sentinels to agree" sentinels_ready
say "redis: primary ${ADDR[redis1]}, replica ${ADDR[redis2]}, 3 sentinels ready"

# -- smtpfront hosts, consumers, HAProxy -----------------------------------------------------------
for n in 1 2; do
    cat >"$WORK/host$n.toml" <<EOF
queue = "$QUEUE"
hostname = "host$n.topology.test"
workers = 2

[[listeners]]
address = "0.0.0.0:2525"
tls = "none"
proxy_protocol = true

[trust]
proxy = ["$LB/32"]

[redis]
durability = "replicated"
replicas = 1
wait_timeout_ms = 1000
timeout = 5.0

[metrics]
listen = "0.0.0.0:9101"
agent_check_listen = "0.0.0.0:9102"

[supervisor]
graceful_timeout = 15
drain_delay = 3

[logging]
format = "plain"
EOF
done
start_host() { start "host$1" "host$1" "$SMTPFRONT" serve --config "$WORK/host$1.toml"; }
start_consumer() {
    GEN[cons$1]=$((GEN[cons$1] + 1))
    mkdir -p "$WORK/maildir$1"
    start "cons$1" "cons$1" "$SMTPFRONT" consume --queue "$QUEUE" --maildir "$WORK/maildir$1" \
        --name "cons$1-${GEN[cons$1]}" --claim-idle-ms 3000 --block-ms 1000 --log-format plain
}
start_host 1
start_host 2
start_consumer 1
start_consumer 2

mkdir -p "/etc/netns/$P-lb"   # HAProxy's `parse-resolv-conf`: no real name server inside the rig
echo "nameserver 127.0.0.1" >"/etc/netns/$P-lb/resolv.conf"
sed -e 's|^    server smtpfront1 .*$|    server smtpfront1 "${BACKEND1_ADDR}"\n    server smtpfront2 "${BACKEND2_ADDR}"|' \
    "$ROOT/deploy/haproxy/haproxy.cfg" >"$WORK/haproxy.cfg"
[ "$(grep -c '^    server smtpfront' "$WORK/haproxy.cfg")" = 2 ] || { say "haproxy.cfg: no server line to render"; exit 1; }
SOCK=$WORK/haproxy.sock
start lb lb env FRONT_BIND="$LB:25" STATS_BIND="127.0.0.1:8404" STATS_SOCKET="$SOCK" \
    BACKEND1_ADDR="$FRONT.31:2525" BACKEND2_ADDR="$FRONT.32:2525" BACKEND_METRICS_PORT=9101 BACKEND_AGENT_PORT=9102 \
    haproxy -db -f "$WORK/haproxy.cfg"

stat_of() { "$PY" "$TOPO" stat --socket "$SOCK" "smtpfront$1" | awk '{print $2}'; }
is_down() { [ "$(stat_of "$1")" = DOWN ]; }
gone() { ! alive "$1"; }
master_is_not() { [ "$(master_addr)" != "$1" ]; }
all_name() {  # every sentinel names $1 as the master (the failover has reached them all)
    local n
    for n in 1 2 3; do
        [ "$(obs timeout 5 redis-cli -h "$BACK.5$n" -p 26379 --raw sentinel get-master-addr-by-name mymaster \
            | head -1)" = "$1" ] || return 1
    done
}
both_up() { [ "$(stat_of 1)" = UP ] && [ "$(stat_of 2)" = UP ]; }
wait_until 40 "HAProxy to see both hosts UP" both_up
say "HAProxy: smtpfront1 $(stat_of 1), smtpfront2 $(stat_of 2); consumers running"

# -- the scenarios ------------------------------------------------------------------------------
# Each fault function runs while the load goes on; its *_after function puts the topology back
# once the load has ended. NOTES collects what was seen during the fault.
NOTES=""
note() { NOTES="$NOTES $*"; say "  $*"; }

fault_steady() { :; }
after_steady() { :; }

fault_kill-host() {
    kill -KILL -- "-${PIDS[host1]}"
    local t0=$SECONDS
    wait_until 20 "HAProxy to mark smtpfront1 DOWN" is_down 1 \
        && note "haproxy_down_after=$((SECONDS - t0))s"
}
after_kill-host() {
    wait "${PIDS[host1]}" 2>/dev/null || true
    start_host 1
    wait_until 40 "smtpfront1 back UP" both_up
}

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.2fs", b - a}'; }

fault_drain-host() {
    local pid=${PIDS[host2]} t0 status="" end=$((SECONDS + 15))
    t0=$(now)
    kill -TERM "$pid"
    while [ $SECONDS -lt $end ]; do
        status=$(stat_of 2)
        if [[ $status == DRAIN* ]]; then
            if alive "$pid"; then note "drain_seen=$(since "$t0")_before_the_host_stopped"
            else note "drain_seen=$(since "$t0")_after_the_host_stopped"; fi
            break
        fi
        alive "$pid" || { note "host_stopped=$(since "$t0")_before_HAProxy_saw_drain(status=$status)"; break; }
        sleep 0.1
    done
    wait_until 40 "smtpfront2 to exit" gone "$pid" && note "host_exited=$(since "$t0")"
}
after_drain-host() {
    alive "${PIDS[host2]}" && kill -KILL -- "-${PIDS[host2]}"
    wait "${PIDS[host2]}" 2>/dev/null || true
    start_host 2
    wait_until 40 "smtpfront2 back UP" both_up
}

fault_kill-redis-primary() {
    local old new node t0=$SECONDS
    old=$(master_addr)
    node=redis1; [ "$old" = "${ADDR[redis2]}" ] && node=redis2
    kill -KILL -- "-${PIDS[$node]}"
    note "killed_primary=$node($old)"
    wait_until 40 "Sentinel to promote the replica" master_is_not "$old" \
        || { FAILED=1; return 0; }
    new=$(master_addr)
    note "promoted=${new}_after=$((SECONDS - t0))s"
    # The old primary comes back (no persistence: empty) as a replica of the new one; started
    # only once the failover is done at every sentinel: one that still names the old address
    # would see it answer again as a replica and make it the master (empty) once more.
    wait_until 40 "every sentinel to name the new master" all_name "$new" || { FAILED=1; return 0; }
    wait "${PIDS[$node]}" 2>/dev/null || true
    start_redis "$node" "$new"
    wait_until 40 "the old primary to sync as a replica" replica_online "$new" \
        && note "replica_online_after=$((SECONDS - t0))s"
}
after_kill-redis-primary() { wait_until 30 "sentinels to agree again" sentinels_ready; }

fault_cut-redis() {
    ip -n "$HUB" link set b-host1 down
    note "cut=host1<->redis+sentinels_for_10s"
    sleep 10
    note "smtpfront1_at_the_end_of_the_cut=$(stat_of 1)"
    ip -n "$HUB" link set b-host1 up
}
after_cut-redis() { wait_until 40 "smtpfront1 back UP" both_up; }

fault_kill-consumer() {
    local name="cons1-${GEN[cons1]}" end=$((SECONDS + 10)) pending=0 master
    master=$(master_addr)
    while [ $SECONDS -lt $end ]; do  # kill it while it holds entries it has not acknowledged
        pending=$(obs timeout 5 redis-cli -h "$master" --raw xpending smtpfront:inbound smtpfront - + 100 "$name" | grep -c '^[0-9]*-[0-9]*$' || true)
        [ "$pending" -gt 0 ] && break
        sleep 0.05
    done
    kill -KILL -- "-${PIDS[cons1]}"
    note "killed=$name(pending=$pending)"
    wait "${PIDS[cons1]}" 2>/dev/null || true
    sleep 2
    start_consumer 1
}
after_kill-consumer() { :; }

for name in "${SCENARIOS[@]}"; do
    NOTES=""
    say "scenario $name: $RATE msgs/s for ${LOAD}s, the fault at ${LEAD}s"
    in_ns client timeout $((LOAD + GRACE + 30)) "$PY" "$TOPO" send --host "$LB" --port 25 --scenario "$name" \
        --run "$$" --rate "$RATE" --seconds "$LOAD" --grace "$GRACE" --out "$WORK/$name.json" \
        2>>"$WORK/$name.send.log" &
    sender=$!
    sleep "$LEAD"
    fault_at=$(date +%s.%N)
    "fault_$name"
    wait "$sender" || { say "the sender failed: $(tail -3 "$WORK/$name.send.log")"; FAILED=1; continue; }
    "after_$name"
    rc=0
    line=$(obs timeout $((WAIT + 60)) "$PY" "$TOPO" count --sent "$WORK/$name.json" --maildir "$WORK/maildir1" --maildir "$WORK/maildir2" \
        --sentinel "$BACK.51:26379" --sentinel "$BACK.52:26379" --sentinel "$BACK.53:26379" \
        --fault-at "$( [ "$name" = steady ] && echo 0 || echo "$fault_at")" --wait "$WAIT") || rc=$?
    [ $rc = 0 ] || FAILED=1
    RESULTS+=("$line${NOTES:+ #$NOTES}")
    echo "$line${NOTES:+ #$NOTES}"
done

say "done in $((SECONDS - T_START))s"
printf '%s\n' "${RESULTS[@]}" >&2
[ $FAILED = 0 ]
