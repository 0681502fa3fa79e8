#!/usr/bin/env bash
# Throughput and server CPU per message of `smtpfront serve`, driven by the pipelined load
# generator on another core. Reads the workers' utime+stime from /proc before and after.
#
# usage: bash loadtest/cpu_per_message.sh PORT WORKERS SERVER_CPUS "QUEUE [serve flags]" [loadgen flags]
# e.g.:  bash loadtest/cpu_per_message.sh 2750 1 0 null: --sessions 10 --messages 1000000 --seconds 5
#        bash loadtest/cpu_per_message.sh 2750 1 0 "maildir:/tmp/spool --no-fsync" --sessions 10 --seconds 5
#        bash loadtest/cpu_per_message.sh 2750 1 0 redis://127.0.0.1:6379/0 --size 102400 --seconds 5
# The generator runs on CPU 1; it stops by itself (--seconds, --messages). LOG_LEVEL=INFO
# measures with the per-message session log the daemon writes by default (WARNING otherwise).
# SOURCE=1: the generator is Postfix smtp-source instead (one command per round trip, as
# loadtest/compare.py drives), given smtp-source's flags, run for SECONDS_RUN (5) seconds, e.g.
#        SOURCE=1 LOG_LEVEL=INFO bash loadtest/cpu_per_message.sh 2750 1 0 redis://127.0.0.1:6379/0 -s 10 -l 1024 -d
set -euo pipefail
cd "$(dirname "$0")/.."
port=$1; workers=$2; cpus=$3; queue=$4; shift 4
# shellcheck disable=SC2086  # QUEUE may carry serve flags on purpose
taskset -c "$cpus" .venv/bin/smtpfront serve --workers "$workers" --listen "127.0.0.1:$port" --queue $queue \
    --no-tls --log-level "${LOG_LEVEL:-WARNING}" > /tmp/smtpfront-cpm.log 2>&1 &
master=$!
trap 'kill $master 2>/dev/null; wait $master 2>/dev/null || true' EXIT
for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
sleep 0.5
kids=$(pgrep -P "$master")
cpu() { local t=0; for k in $kids; do t=$((t + $(awk '{print $14+$15}' "/proc/$k/stat"))); done; echo "$t"; }
t0=$(cpu)
if [ -n "${SOURCE:-}" ]; then
    seconds=${SECONDS_RUN:-5}
    start=$(date +%s.%N)
    timeout "$seconds" taskset -c 1 smtp-source -c -m 1000000000 -f load@example.org -t sink@example.net \
        -M loadgen.example "$@" "127.0.0.1:$port" > /tmp/smtpfront-cpm.out 2>&1 || true
    end=$(date +%s.%N)
    accepted=$(tr '\r' '\n' < /tmp/smtpfront-cpm.out | grep -E '^[0-9]+$' | tail -1)
    accepted=${accepted:-0}
    echo "msgs_per_s: $(awk -v n="$accepted" -v a="$start" -v b="$end" 'BEGIN{printf "%.0f", n/(b-a)}')"
else
    taskset -c 1 .venv/bin/python -m smtpfront.loadgen "127.0.0.1:$port" "$@" > /tmp/smtpfront-cpm.out
    accepted=$(awk '/^accepted/{print $2}' /tmp/smtpfront-cpm.out)
    grep -E "msgs_per_s|mb_per_s|p99|codes" /tmp/smtpfront-cpm.out
fi
t1=$(cpu)
ticks=$(getconf CLK_TCK)
echo "workers=$workers queue=[$queue] $*"
echo "server_cpu_us_per_msg: $(( (t1 - t0) * 1000000 / ticks / (accepted > 0 ? accepted : 1) ))"
