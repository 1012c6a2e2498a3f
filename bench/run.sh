#!/usr/bin/env bash
# bench/run.sh BUILD_DIR: paybridge's benchmarks (`make bench`).
#
# Runs five scenarios, each in a fresh directory with a fresh store, prints a
# summary table and writes BUILD_DIR/bench/results-latest.json (results are
# build products: they are never committed). See bench/README.md.
#
#   1. idle RSS        serve with 4 workers on a sandbox-backed config, 2 s idle
#   2. ingest          serve --no-workers, pb_loadgen closed loop: durable acks/s,
#                      peak RSS, group-commit batch size, CPU per server thread
#   3. ack latency     serve --no-workers, pb_loadgen open loop at a fixed rate
#   4. end to end      serve with workers + Xero sandbox without limits: events/s
#                      from the first webhook to the last payment posted, and
#                      the exactly-once checks
#   5. reconciliation  1M settlement lines x 1M ledger records (generated once,
#                      cached): load + match time and peak RSS, the pandas
#                      baseline on the same files, the same exact matches
#
# A MISS is reported, not failed: the script exits 0 when every scenario ran,
# and 1 only when one could not run at all (a binary missing, a server that
# did not start) or gave a wrong answer (scenario 5's exact matches). Knobs (environment): BENCH_INGEST_CONNECTIONS (64),
# BENCH_INGEST_REQUESTS (200000), BENCH_INGEST_SECONDS (10), BENCH_LATENCY_RATE
# (5000), BENCH_LATENCY_SECONDS (10), BENCH_E2E_EVENTS (50000),
# BENCH_E2E_TIMEOUT (150), BENCH_WORKERS (4), BENCH_KEEP=1 keeps the stores,
# BENCH_RECON_LINES (1000000), BENCH_RECON_SEED (20260301),
# BENCH_SCENARIOS ("1 2 3 4 5") picks scenarios, BENCH_ENGINE_ENV and
# BENCH_SANDBOX_ENV (VAR=value words for the server's or the sandbox's
# environment), BENCH_ENGINE_WRAP (a command the server runs under, e.g.
# valgrind): see bench/README.md.
#
# Only bash, coreutils, grep, sed and awk are needed: HTTP GETs go through
# `pb_loadgen --get`. Servers are started directly (never through a subshell)
# so that the script stops exactly the processes it started, by pid.
set -uo pipefail

BUILD=${1:-}
if [ -z "$BUILD" ] || [ ! -d "$BUILD" ]; then
    echo "usage: bench/run.sh BUILD_DIR" >&2
    exit 2
fi
BUILD=$(cd "$BUILD" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PB=$BUILD/paybridge
SBX=$BUILD/paybridge-sandbox
LG=$BUILD/bench/pb_loadgen
OUT=$BUILD/bench
FLOW=${BENCH_FLOW:-$ROOT/flows/opayo-xero.yaml}

INGEST_CONNECTIONS=${BENCH_INGEST_CONNECTIONS:-64}
INGEST_REQUESTS=${BENCH_INGEST_REQUESTS:-200000}
INGEST_SECONDS=${BENCH_INGEST_SECONDS:-10}
LATENCY_RATE=${BENCH_LATENCY_RATE:-5000}
LATENCY_SECONDS=${BENCH_LATENCY_SECONDS:-10}
E2E_EVENTS=${BENCH_E2E_EVENTS:-50000}
E2E_TIMEOUT=${BENCH_E2E_TIMEOUT:-150}
WORKERS=${BENCH_WORKERS:-4}
SCENARIOS=" ${BENCH_SCENARIOS:-1 2 3 4 5} "
NOTIFY_SECRET=bench-notify-secret
VENDOR=sandbox
TENANT=2f9b7d4c-8a1e-4c3b-9f5d-6e0a1b2c3d4e
TICK=$(getconf CLK_TCK)

for bin in "$PB" "$SBX" "$LG"; do
    if [ ! -x "$bin" ]; then
        echo "bench: $bin is missing; build first (cmake --build $BUILD)" >&2
        exit 1
    fi
done
mkdir -p "$OUT"
# The stores live beside the build, on a real disk: /tmp may be a tmpfs, where
# fsync costs nothing and the "durable" numbers would mean nothing.
WORK=$(mktemp -d "$OUT/run.XXXXXX")
LOGS=$OUT/logs-latest
rm -rf "$LOGS"
mkdir -p "$LOGS"

STARTED=()          # pids of servers this script started, stopped in reverse
ERRORS=0
RESULTS=()          # "name":{...} JSON members
ROWS=()             # summary table rows: name|measured|target|verdict
CRASHES=()          # "scenario: last log line" of servers that died
NOT_QUIET=0         # scenarios that started while other work kept the machine busy

stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
        sleep 0.1
    done
    echo "bench: pid $pid ignored SIGTERM for 10 s; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}

stop_all() {
    local i
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        stop_pid "${STARTED[$i]}"
    done
    STARTED=()
}

cleanup() {
    stop_all
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "bench: stores kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# First number after "KEY": in a one-line JSON text (keys are unique enough in
# what we read: pb_loadgen's result line and the sandbox's stats).
jnum() {
    grep -o "\"$1\":-\?[0-9.]*" <<<"$2" | head -1 | cut -d: -f2
}

# Value of a Prometheus sample line "NAME VALUE" (labels included in NAME).
metric() {
    awk -v n="$1" '$1 == n { print $2; exit }' <<<"$2"
}

wait_for_file() {
    local f=$1 pid=$2 i
    for i in $(seq 1 300); do
        [ -s "$f" ] && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

status_kb() {   # status_kb PID VmRSS|VmHWM -> kB
    awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null
}

proc_ticks() {  # utime + stime of a whole process
    awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null
}

sys_ticks() {    # "busy total" ticks of the whole machine, from /proc/stat
    awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit }' /proc/stat
}

# machine_busy BEFORE AFTER: machine-wide busy CPU between two sys_ticks, in %
# of one core (so up to nproc x 100).
machine_busy() {
    awk -v a="$1" -v b="$2" -v n="$NPROC" 'BEGIN {
        split(a, x, " "); split(b, y, " ")
        if (y[2] - x[2] > 0) printf "%.0f", 100 * n * (y[1] - x[1]) / (y[2] - x[2]); else print 0 }'
}

# wait_quiet: other sessions may share this machine. Wait (at most 20 s) for a
# second in which the machine is under 25% of one core busy; say so if not.
wait_quiet() {
    local i a b busy
    # the previous scenario's store (hundreds of MB, deleted) may still be
    # written back: flush it first, or its writeback lands in this
    # scenario's fsyncs (scenario 3 right after 2: p99 14 ms, alone 7-8 ms)
    sync
    for i in $(seq 1 20); do
        a=$(sys_ticks)
        sleep 1
        b=$(sys_ticks)
        busy=$(machine_busy "$a" "$b")
        [ "$busy" -lt 25 ] && return 0
    done
    echo "   note: the machine was not idle before this scenario (${busy}% of one core busy with other work)" >&2
    NOT_QUIET=$((NOT_QUIET + 1))
}

thread_ticks() { # "tid comm ticks" per thread
    local t s comm rest f
    for t in /proc/"$1"/task/*; do
        s=$(cat "$t/stat" 2>/dev/null) || continue
        comm=${s#*(}
        comm=${comm%)*}
        rest=${s##*) }
        read -ra f <<<"$rest"
        echo "${t##*/} ${comm// /_} $((f[11] + f[12]))"
    done
}

# thread_report BEFORE AFTER SECONDS: the busiest threads, as % of one core.
thread_report() {
    awk -v secs="$3" -v tick="$TICK" '
        NR == FNR { before[$1] = $3; next }
        { d = $3 - before[$1]; if (d > 0) printf "%.0f %s %s\n", 100 * d / tick / secs, $1, $2 }
    ' <(echo "$1") <(echo "$2") | sort -rn | head -8 |
        awk '{ printf "%s%s(tid %s) %s%%", (NR > 1 ? ", " : ""), $3, $2, $1 }'
}

start_sandbox() {   # start_sandbox DIR -> XERO_PORT set
    local dir=$1
    cat >"$dir/sandbox.json" <<EOF
{"bind":"127.0.0.1","xero":{"port":0,"limits":false,"tenant_id":"$TENANT"}}
EOF
    env ${BENCH_SANDBOX_ENV:-} "$SBX" --config "$dir/sandbox.json" --ports-file "$dir/sandbox.ports" \
        >"$dir/sandbox.out" 2>"$dir/sandbox.log" &
    SBX_PID=$!
    STARTED+=("$SBX_PID")
    if ! wait_for_file "$dir/sandbox.ports" "$SBX_PID"; then
        echo "bench: the sandbox did not start (see $LOGS)" >&2
        cp "$dir/sandbox.log" "$LOGS/" 2>/dev/null
        return 1
    fi
    XERO_PORT=$(grep -o '"xero":[0-9]*' "$dir/sandbox.ports" | cut -d: -f2)
}

# The connection names the flow expects; the demo's names when there is no flow.
SOURCE=opayo-shop
TARGET=xero-demo
if [ -f "$FLOW" ]; then
    s=$(sed -n 's/^source:[[:space:]]*"\{0,1\}\([a-z0-9_-]*\)"\{0,1\}.*/\1/p' "$FLOW" | head -1)
    t=$(sed -n 's/^target:[[:space:]]*"\{0,1\}\([a-z0-9_-]*\)"\{0,1\}.*/\1/p' "$FLOW" | head -1)
    [ -n "$s" ] && SOURCE=$s
    [ -n "$t" ] && TARGET=$t
fi

write_config() {    # write_config DIR
    local dir=$1 flows="[]"
    [ -f "$FLOW" ] && flows="[\"$FLOW\"]"
    cat >"$dir/paybridge.yaml" <<EOF
# written by bench/run.sh
server:
  listen: "127.0.0.1:0"
  threads: ${BENCH_HTTP_THREADS:-2}
store: "sqlite:$dir/paybridge.db${BENCH_STORE_OPTS:-}"
workers: $WORKERS
log_level: warn
admin:
  metrics_public: true
connections:
  $SOURCE:
    connector: opayo
    settings:
      confirm: false
      vendor_name: $VENDOR
    secrets:
      notify_secret: "$NOTIFY_SECRET"
  $TARGET:
    connector: xero
    settings:
      api_base: "http://127.0.0.1:$XERO_PORT/api.xro/2.0"
      token_url: "http://127.0.0.1:$XERO_PORT/connect/token"
      tenant_id: "$TENANT"
    secrets:
      client_id: sandbox-client
      client_secret: sandbox-secret
    rate_limit: false
    retry: {base_ms: 200, cap_ms: 5000, max_attempts: 8}
flows: $flows
EOF
}

start_engine() {    # start_engine DIR [--no-workers] -> ENGINE_PID, ENGINE_PORT
    local dir=$1
    shift
    env ${BENCH_ENGINE_ENV:-} ${BENCH_ENGINE_WRAP:-} "$PB" serve -c "$dir/paybridge.yaml" --port 0 --port-file "$dir/engine.port" "$@" \
        >"$dir/engine.out" 2>"$dir/engine.log" &
    ENGINE_PID=$!
    STARTED+=("$ENGINE_PID")
    if ! wait_for_file "$dir/engine.port" "$ENGINE_PID"; then
        echo "bench: paybridge serve did not start:" >&2
        tail -5 "$dir/engine.log" >&2
        cp "$dir/engine.log" "$LOGS/engine-$(basename "$dir").log" 2>/dev/null
        return 1
    fi
    ENGINE_PORT=$(head -1 "$dir/engine.port")
}

# fresh NAME: a new directory with a sandbox and a config
fresh() {
    local dir=$WORK/$1
    mkdir -p "$dir"
    start_sandbox "$dir" || return 1
    write_config "$dir"
    DIR=$dir
}

finish_scenario() { # copy logs, stop servers
    local name=$1
    stop_all
    cp "$DIR/engine.log" "$LOGS/$name-engine.log" 2>/dev/null
    cp "$DIR/sandbox.log" "$LOGS/$name-sandbox.log" 2>/dev/null
    [ -f "$DIR/loadgen.err" ] && cp "$DIR/loadgen.err" "$LOGS/$name-loadgen.log"
    [ "${BENCH_KEEP:-0}" = 1 ] || rm -f "$DIR"/paybridge.db*
}

# crashed PID NAME: when the server died during a scenario, say so (its last
# log line, e.g. an assertion), count it as an error and return 0.
crashed() {
    kill -0 "$1" 2>/dev/null && return 1
    local why
    why=$(tail -1 "$DIR/engine.log" 2>/dev/null | tr -d '"\\' | cut -c1-200)
    echo "   SERVER DIED during $2: ${why:-no message}" >&2
    CRASHES+=("$2: ${why:-no message}")
    ERRORS=$((ERRORS + 1))
    return 0
}

verdict() {         # verdict VALUE OP TARGET -> PASS|MISS
    awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN {
        ok = (op == "<=" && v <= t) || (op == ">=" && v >= t) || (op == "<" && v < t) || (op == ">" && v > t)
        print (v == "" ? "MISS" : (ok ? "PASS" : "MISS")) }'
}

scenario_error() {  # scenario_error NAME LABEL WHY
    ERRORS=$((ERRORS + 1))
    ROWS+=("$2|not measured: $3|-|ERROR")
    RESULTS+=("\"$1\":{\"verdict\":\"ERROR\",\"error\":\"$3\"}")
    stop_all
}

run_loadgen() {     # run_loadgen ARGS... -> LG_JSON, LG_RC, LG_CPU_S
    local t0 t1
    t0=$(proc_ticks_self)
    "$LG" --port "$ENGINE_PORT" --path "/hooks/$SOURCE" --secret "$NOTIFY_SECRET" \
        --vendor "$VENDOR" "$@" >"$DIR/loadgen.json" 2>"$DIR/loadgen.err"
    LG_RC=$?
    t1=$(proc_ticks_self)
    LG_JSON=$(tail -1 "$DIR/loadgen.json")
    LG_CPU_S=$(awk -v a="$t0" -v b="$t1" -v t="$TICK" 'BEGIN { printf "%.2f", (b - a) / t }')
    grep -v '^$' "$DIR/loadgen.err" | sed 's/^/    /'
}

proc_ticks_self() { # CPU of finished children of this shell (pb_loadgen runs)
    awk '{ sub(/.*\) /, ""); print $14 + $15 }' /proc/$$/stat
}

echo "paybridge bench: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
NPROC=$(nproc)
MEM_GB=$(awk '/^MemTotal/ { printf "%.1f", $2 / 1048576 }' /proc/meminfo)
FS=$(findmnt -no FSTYPE -T "$WORK" 2>/dev/null || stat -f -c %T "$WORK")
KERNEL=$(uname -r)
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo "+dirty")
echo "machine: nproc=$NPROC cpu=\"$CPU_MODEL\" mem=${MEM_GB}GB kernel=$KERNEL store_fs=$FS commit=$COMMIT$DIRTY"
[ -f "$FLOW" ] || echo "bench: $FLOW is missing: events are stored without jobs and scenario 4 cannot run" >&2

# ---- 1. idle RSS ------------------------------------------------------------------------
echo "== 1. idle RSS (serve, $WORKERS workers, 2 s idle)"
if [[ $SCENARIOS != *" 1 "* ]]; then
    echo "   skipped (BENCH_SCENARIOS)"
elif fresh idle && start_engine "$DIR"; then
    sleep 2
    RSS=$(status_kb "$ENGINE_PID" VmRSS)
    HWM=$(status_kb "$ENGINE_PID" VmHWM)
    THREADS=$(ls "/proc/$ENGINE_PID/task" | wc -l)
    RSS_MB=$(awk -v k="$RSS" 'BEGIN { printf "%.1f", k / 1024 }')
    V=$(verdict "$RSS_MB" "<=" 20)
    echo "   VmRSS ${RSS_MB} MB (VmHWM $((HWM / 1024)) MB, $THREADS threads)  target <= 20 MB  $V"
    crashed "$ENGINE_PID" idle && V=CRASH
    ROWS+=("idle RSS|${RSS_MB} MB ($THREADS threads)|<= 20 MB|$V")
    RESULTS+=("\"idle_rss\":{\"vmrss_kb\":$RSS,\"vmhwm_kb\":$HWM,\"threads\":$THREADS,\"workers\":$WORKERS,\"target_mb\":20,\"verdict\":\"$V\"}")
    finish_scenario idle
else
    scenario_error idle_rss "idle RSS" "server did not start"
fi

# ---- 2. ingest throughput ---------------------------------------------------------------
echo "== 2. ingest throughput (serve --no-workers, closed loop, $INGEST_CONNECTIONS connections x $INGEST_REQUESTS requests or ${INGEST_SECONDS} s)"
if [[ $SCENARIOS != *" 2 "* ]]; then
    echo "   skipped (BENCH_SCENARIOS)"
elif fresh ingest && start_engine "$DIR" --no-workers; then
    wait_quiet
    M_BEFORE=$(sys_ticks)
    T_BEFORE=$(thread_ticks "$ENGINE_PID")
    P_BEFORE=$(proc_ticks "$ENGINE_PID")
    run_loadgen --connections "$INGEST_CONNECTIONS" --requests "$INGEST_REQUESTS" \
        --max-seconds "$INGEST_SECONDS" --label ingest
    T_AFTER=$(thread_ticks "$ENGINE_PID")
    P_AFTER=$(proc_ticks "$ENGINE_PID")
    M_AFTER=$(sys_ticks)
    ELAPSED=$(jnum elapsed_s "$LG_JSON")
    ACKS=$(jnum acks_per_s "$LG_JSON")
    OK=$(jnum ok "$LG_JSON")
    FAILED=$(jnum failed "$LG_JSON")
    METRICS=$("$LG" --port "$ENGINE_PORT" --get /metrics 2>/dev/null)
    COMMITS=$(metric paybridge_store_commits_total "$METRICS")
    OPS=$(metric paybridge_store_ops_total "$METRICS")
    PAGES=$(metric paybridge_store_pages_written_total "$METRICS")
    RESTARTS=$(metric paybridge_store_wal_restarts_total "$METRICS")
    HWM=$(status_kb "$ENGINE_PID" VmHWM)
    SERVER_CPU=$(awk -v a="$P_BEFORE" -v b="$P_AFTER" -v t="$TICK" -v s="${ELAPSED:-0}" \
        'BEGIN { if (s > 0 && b != "") printf "%.0f", 100 * (b - a) / t / s; else print 0 }')
    BATCH=$(awk -v a="${OK:-0}" -v c="${COMMITS:-0}" 'BEGIN { if (c > 0) printf "%.1f", a / c; else print "null" }')
    # CPU cost per ack is steadier than acks/s on a machine shared with other work
    US_PER_ACK=$(awk -v a="$P_BEFORE" -v b="$P_AFTER" -v t="$TICK" -v n="${OK:-0}" 'BEGIN { if (n > 0 && b != "") printf "%.0f", 1e6 * (b - a) / t / n; else print "null" }')
    THREADS_TOP=$(thread_report "$T_BEFORE" "$T_AFTER" "${ELAPSED:-1}")
    BUSY=$(machine_busy "$M_BEFORE" "$M_AFTER")
    LG_PCT=$(awk -v c="$LG_CPU_S" -v s="${ELAPSED:-0}" 'BEGIN { if (s > 0) printf "%.0f", 100 * c / s; else print 0 }')
    OTHER=$((BUSY - SERVER_CPU - LG_PCT))
    [ "$OTHER" -lt 0 ] && OTHER=0
    V=$(verdict "${ACKS:-0}" ">=" 20000)
    [ -n "$ELAPSED" ] || V=MISS
    crashed "$ENGINE_PID" ingest && V=CRASH
    echo "   ${ACKS:-?} durable acks/s ($OK ok, $FAILED failed, ${ELAPSED:-?} s)  target >= 20000/s  $V"
    echo "   group commit: ${COMMITS:-?} commits, ${OPS:-?} ops -> $BATCH acks per commit, ${PAGES:-?} pages written, WAL restarted ${RESTARTS:-?} times; server peak RSS $((${HWM:-0} / 1024)) MB"
    echo "   CPU (% of one core, of $((NPROC * 100))%): server ${SERVER_CPU}% = ${US_PER_ACK} us per ack, pb_loadgen ${LG_PCT}%, whole machine ${BUSY}% (other work ~${OTHER}%)"
    echo "   busiest server threads: $THREADS_TOP"
    ROWS+=("ingest throughput|${ACKS:-?} acks/s (batch $BATCH/commit, peak RSS $((${HWM:-0} / 1024)) MB)|>= 20000/s|$V")
    RESULTS+=("\"ingest\":{\"loadgen\":${LG_JSON:-null},\"store_commits\":${COMMITS:-null},\"store_ops\":${OPS:-null},\"acks_per_commit\":$BATCH,\"server_cpu_us_per_ack\":$US_PER_ACK,\"server_vmhwm_kb\":${HWM:-null},\"server_cpu_pct\":$SERVER_CPU,\"loadgen_cpu_pct\":$LG_PCT,\"machine_busy_pct\":$BUSY,\"other_work_pct\":$OTHER,\"busiest_threads\":\"$THREADS_TOP\",\"target_acks_per_s\":20000,\"verdict\":\"$V\"}")
    finish_scenario ingest
else
    scenario_error ingest "ingest throughput" "server did not start"
fi

# ---- 3. ack latency at a fixed rate -----------------------------------------------------
echo "== 3. ack latency (serve --no-workers, open loop ${LATENCY_RATE}/s for ${LATENCY_SECONDS} s)"
if [[ $SCENARIOS != *" 3 "* ]]; then
    echo "   skipped (BENCH_SCENARIOS)"
elif fresh latency && start_engine "$DIR" --no-workers; then
    wait_quiet
    M_BEFORE=$(sys_ticks)
    P_BEFORE=$(proc_ticks "$ENGINE_PID")
    run_loadgen --rate "$LATENCY_RATE" --duration "$LATENCY_SECONDS" --connections 64 --label latency
    M_AFTER=$(sys_ticks)
    P_AFTER=$(proc_ticks "$ENGINE_PID")
    BUSY=$(machine_busy "$M_BEFORE" "$M_AFTER")
    SERVER_CPU=$(awk -v a="$P_BEFORE" -v b="$P_AFTER" -v t="$TICK" -v s="$LATENCY_SECONDS" 'BEGIN { if (b == "") print 0; else printf "%.0f", 100 * (b - a) / t / s }')
    LG_PCT=$(awk -v c="$LG_CPU_S" -v s="$LATENCY_SECONDS" 'BEGIN { printf "%.0f", 100 * c / s }')
    OTHER=$((BUSY - SERVER_CPU - LG_PCT))
    [ "$OTHER" -lt 0 ] && OTHER=0
    P50=$(jnum p50 "$LG_JSON")
    P90=$(jnum p90 "$LG_JSON")
    P99=$(jnum p99 "$LG_JSON")
    P999=$(jnum p999 "$LG_JSON")
    MAX=$(jnum max "$LG_JSON")
    RATE=$(jnum achieved_rate "$LG_JSON")
    FAILED=$(jnum failed "$LG_JSON")
    BACKLOG=$(jnum max_backlog "$LG_JSON")
    V=$(verdict "${P99:-999999}" "<" 10)
    [ "${FAILED:-1}" = 0 ] || V=MISS
    crashed "$ENGINE_PID" latency && V=CRASH
    echo "   p50 $P50 ms, p90 $P90 ms, p99 $P99 ms, p99.9 $P999 ms, max $MAX ms; achieved ${RATE}/s, $FAILED failed, max backlog $BACKLOG  target p99 < 10 ms  $V"
    echo "   CPU (% of one core): server ${SERVER_CPU}%, pb_loadgen ${LG_PCT}%, whole machine ${BUSY}% (other work ~${OTHER}%)"
    METRICS=$("$LG" --port "$ENGINE_PORT" --get /metrics 2>/dev/null)
    echo "   store: $(metric paybridge_store_commits_total "$METRICS") commits, WAL restarted $(metric paybridge_store_wal_restarts_total "$METRICS") times, writer paused $(metric paybridge_store_wal_restart_pause_seconds_total "$METRICS") s for them"
    ROWS+=("ack latency @${LATENCY_RATE}/s|p99 ${P99} ms (p50 $P50, p99.9 $P999, max $MAX)|p99 < 10 ms|$V")
    RESULTS+=("\"ack_latency\":{\"loadgen\":${LG_JSON:-null},\"server_cpu_pct\":$SERVER_CPU,\"loadgen_cpu_pct\":$LG_PCT,\"machine_busy_pct\":$BUSY,\"other_work_pct\":$OTHER,\"target_p99_ms\":10,\"verdict\":\"$V\"}")
    finish_scenario latency
else
    scenario_error ack_latency "ack latency" "server did not start"
fi

# ---- 4. end to end ----------------------------------------------------------------------
echo "== 4. end to end ($E2E_EVENTS events, $WORKERS workers, Xero sandbox without limits, confirm off)"
if [[ $SCENARIOS != *" 4 "* ]]; then
    echo "   skipped (BENCH_SCENARIOS)"
elif [ ! -f "$FLOW" ]; then
    scenario_error end_to_end "end to end" "flows/opayo-xero.yaml missing"
elif fresh e2e && start_engine "$DIR"; then
    wait_quiet
    M_BEFORE=$(sys_ticks)
    T_BEFORE=$(thread_ticks "$ENGINE_PID")
    P_BEFORE=$(proc_ticks "$ENGINE_PID")
    S_BEFORE=$(proc_ticks "$SBX_PID")
    run_loadgen --connections 64 --requests "$E2E_EVENTS" --label e2e
    T_FIRST=$(jnum t_first_send_unix_ms "$LG_JSON")
    T_ACKED=$(jnum t_last_reply_unix_ms "$LG_JSON")
    OK=$(jnum ok "$LG_JSON")
    DEADLINE=$(($(date +%s) + E2E_TIMEOUT))
    STATS=""
    PAYMENTS=0
    T_DONE=""
    while :; do
        # pb_loadgen polls the sandbox every 20 ms for up to 1 s in one process
        # (a shell loop per poll cost a few % of the machine's CPU)
        UNTIL=$("$LG" --port "$XERO_PORT" --get /_sandbox/stats --until "payments=$E2E_EVENTS" \
            --interval-ms 20 --timeout 1 2>/dev/null)
        PAYMENTS=$(jnum value "$UNTIL")
        if [ "${PAYMENTS:-0}" -ge "$E2E_EVENTS" ]; then
            T_DONE=$(jnum t_unix_ms "$UNTIL")
            break
        fi
        METRICS=$("$LG" --port "$ENGINE_PORT" --get /metrics 2>/dev/null)
        READY=$(metric 'paybridge_jobs{state="ready"}' "$METRICS")
        LEASED=$(metric 'paybridge_jobs{state="leased"}' "$METRICS")
        if [ -n "$READY$LEASED" ] && [ "${READY:-0}" = 0 ] && [ "${LEASED:-0}" = 0 ] &&
            [ "${OK:-0}" -gt 0 ]; then
            # drained, but fewer payments than events: the rest are dead letters
            sleep 0.5
            STATS=$("$LG" --port "$XERO_PORT" --get /_sandbox/stats 2>/dev/null)
            PAYMENTS=$(jnum payments "$STATS")
            [ "${PAYMENTS:-0}" -ge "$E2E_EVENTS" ] && T_DONE=$(date +%s%3N)
            break
        fi
        [ "$(date +%s)" -ge "$DEADLINE" ] && break
        kill -0 "$ENGINE_PID" 2>/dev/null || break
    done
    STATS=$("$LG" --port "$XERO_PORT" --get /_sandbox/stats 2>/dev/null)
    ELAPSED_S=$(awk -v a="${T_FIRST:-0}" -v b="$(date +%s%3N)" 'BEGIN { printf "%.1f", (b - a) / 1000 }')
    T_AFTER=$(thread_ticks "$ENGINE_PID")
    P_AFTER=$(proc_ticks "$ENGINE_PID")
    S_AFTER=$(proc_ticks "$SBX_PID")
    M_AFTER=$(sys_ticks)
    METRICS=$("$LG" --port "$ENGINE_PORT" --get /metrics 2>/dev/null)
    DEAD=$(metric paybridge_dead_letters "$METRICS")
    COMMITS=$(metric paybridge_store_commits_total "$METRICS")
    OPS=$(metric paybridge_store_ops_total "$METRICS")
    PAGES=$(metric paybridge_store_pages_written_total "$METRICS")
    WBUSY=$(metric paybridge_store_writer_busy_seconds_total "$METRICS")
    WCOMMIT=$(metric paybridge_store_commit_seconds_total "$METRICS")
    INVOICES=$(jnum invoices "$STATS")
    CONTACTS=$(jnum contacts "$STATS")
    DUP_INV=$(jnum duplicate_invoice_references "$STATS")
    DUP_PAY=$(jnum duplicate_payment_references "$STATS")
    XREQ=$(jnum requests "$STATS")
    if [ -n "$T_DONE" ]; then
        EPS=$(awk -v n="$E2E_EVENTS" -v a="$T_FIRST" -v b="$T_DONE" 'BEGIN { printf "%.0f", n * 1000 / (b - a) }')
        SPAN=$(awk -v a="$T_FIRST" -v b="$T_DONE" 'BEGIN { printf "%.2f", (b - a) / 1000 }')
        V=$(verdict "$EPS" ">=" 5000)
    else
        EPS=0
        SPAN=null
        V=MISS
    fi
    INGEST_EPS=$(awk -v n="${OK:-0}" -v a="${T_FIRST:-0}" -v b="${T_ACKED:-0}" 'BEGIN { if (b > a) printf "%.0f", n * 1000 / (b - a); else print 0 }')
    EXACT=FAIL
    if [ "${DUP_INV:-1}" = 0 ] && [ "${DUP_PAY:-1}" = 0 ] && [ "${INVOICES:-0}" = "$E2E_EVENTS" ] &&
        [ "${PAYMENTS:-0}" = "$E2E_EVENTS" ]; then
        EXACT=PASS
    fi
    [ "$EXACT" = PASS ] || V=MISS
    crashed "$ENGINE_PID" e2e && V=CRASH
    SERVER_CPU=$(awk -v a="$P_BEFORE" -v b="$P_AFTER" -v t="$TICK" -v s="$ELAPSED_S" 'BEGIN { if (b == "") print "null"; else printf "%.0f", 100 * (b - a) / t / s }')
    SBX_CPU=$(awk -v a="$S_BEFORE" -v b="$S_AFTER" -v t="$TICK" -v s="$ELAPSED_S" 'BEGIN { printf "%.0f", 100 * (b - a) / t / s }')
    THREADS_TOP=$(thread_report "$T_BEFORE" "$T_AFTER" "$ELAPSED_S")
    BUSY=$(machine_busy "$M_BEFORE" "$M_AFTER")
    US_PER_EVENT=$(awk -v a="$P_BEFORE" -v b="$P_AFTER" -v t="$TICK" -v n="$E2E_EVENTS" 'BEGIN { if (b != "") printf "%.0f", 1e6 * (b - a) / t / n; else print "null" }')
    echo "   $EPS events/s: $E2E_EVENTS events, first send -> last payment posted ${SPAN} s (all acknowledged after $(awk -v a="${T_FIRST:-0}" -v b="${T_ACKED:-0}" 'BEGIN { printf "%.2f", (b - a) / 1000 }') s = $INGEST_EPS acks/s)  target >= 5000/s  $V"
    echo "   store: ${COMMITS:-?} commits, ${OPS:-?} ops ($(awk -v o="${OPS:-0}" -v c="${COMMITS:-0}" 'BEGIN { if (c > 0) printf "%.1f", o / c; else print "?" }') ops per commit, $(awk -v c="${COMMITS:-0}" -v n="$E2E_EVENTS" 'BEGIN { printf "%.2f", c / n }') commits per event, ${PAGES:-?} pages written = $(awk -v p="${PAGES:-0}" -v n="$E2E_EVENTS" 'BEGIN { printf "%.1f", p / n }') per event); writer busy ${WBUSY:-?} s (in COMMIT ${WCOMMIT:-?} s) of ${ELAPSED_S} s"
    echo "   exactly-once $EXACT: invoices ${INVOICES:-?} payments ${PAYMENTS:-?} contacts ${CONTACTS:-?} duplicate_invoice_references ${DUP_INV:-?} duplicate_payment_references ${DUP_PAY:-?} dead letters ${DEAD:-?}; Xero API requests ${XREQ:-?}"
    echo "   CPU over the run (% of one core, of $((NPROC * 100))%): server ${SERVER_CPU}% = ${US_PER_EVENT} us per event, sandbox ${SBX_CPU}%, whole machine ${BUSY}% (includes pb_loadgen while pushing)"
    echo "   busiest server threads: $THREADS_TOP"
    ROWS+=("end to end|$EPS events/s (exactly-once $EXACT)|>= 5000/s|$V")
    RESULTS+=("\"end_to_end\":{\"events\":$E2E_EVENTS,\"loadgen\":${LG_JSON:-null},\"t_all_posted_unix_ms\":${T_DONE:-null},\"seconds_first_send_to_last_payment\":$SPAN,\"events_per_s\":$EPS,\"ack_rate_during_push\":$INGEST_EPS,\"sandbox\":${STATS:-null},\"dead_letters\":${DEAD:-null},\"store_commits\":${COMMITS:-null},\"store_ops\":${OPS:-null},\"store_pages_written\":${PAGES:-null},\"exactly_once\":\"$EXACT\",\"server_cpu_pct\":$SERVER_CPU,\"server_cpu_us_per_event\":$US_PER_EVENT,\"sandbox_cpu_pct\":$SBX_CPU,\"machine_busy_pct\":$BUSY,\"busiest_threads\":\"$THREADS_TOP\",\"target_events_per_s\":5000,\"verdict\":\"$V\"}")
    finish_scenario e2e
else
    scenario_error end_to_end "end to end" "server did not start"
fi

# ---- 5. reconciliation ------------------------------------------------------------------
# Generated data (cached in BUILD/bench/recon-data, keyed by size, seed and the
# generator binary), pb_recon_bench (load + match, one JSON line), then the
# analyst's pandas merge (bench/recon/baseline.py) on the same files. Both must
# find exactly the generator's exact reference matches, count and fingerprint:
# a difference is a FAIL and makes the script exit 1. Time or memory above the
# target is a MISS. See bench/README.md.
RECON_LINES=${BENCH_RECON_LINES:-1000000}
RECON_SEED=${BENCH_RECON_SEED:-20260301}
RGEN=$BUILD/bench/recon/pb_recon_gen
RBENCH=$BUILD/bench/recon/pb_recon_bench
RPY=/usr/bin/python3
RLABEL=$(awk -v n="$RECON_LINES" 'BEGIN { if (n % 1000000 == 0) printf "%dM", n / 1000000; else if (n % 1000 == 0) printf "%dk", n / 1000; else print n }')
echo "== 5. reconciliation ($RECON_LINES settlement lines x $RECON_LINES ledger records, load + match; pandas baseline on the same files)"
if [[ $SCENARIOS != *" 5 "* ]]; then
    echo "   skipped (BENCH_SCENARIOS)"
elif [ ! -x "$RGEN" ] || [ ! -x "$RBENCH" ]; then
    scenario_error reconciliation "reconciliation" "pb_recon_gen or pb_recon_bench missing"
else
    RDATA=$OUT/recon-data/$RECON_LINES-$RECON_SEED-$(sha256sum "$RGEN" | cut -c1-12)
    RERR=""
    if [ ! -s "$RDATA/manifest.json" ]; then
        rm -rf "$OUT/recon-data" # one data set at a time: about 210 MB per million lines
        mkdir -p "$RDATA"
        T0=$(date +%s%3N)
        if "$RGEN" --lines "$RECON_LINES" --seed "$RECON_SEED" --out "$RDATA" 2>"$LOGS/recon-gen.log"; then
            echo "   generated in $(awk -v a="$T0" -v b="$(date +%s%3N)" 'BEGIN { printf "%.1f", (b - a) / 1000 }') s: $RDATA"
        else
            RERR="the generator failed (see $LOGS/recon-gen.log)"
            rm -rf "$RDATA"
        fi
    else
        echo "   data (cached): $RDATA"
    fi
    if [ -z "$RERR" ] && ! "$RPY" -c 'import pandas' 2>/dev/null; then
        echo "   installing Debian's python3-pandas for the baseline"
        RSUDO=""
        [ "$(id -u)" -ne 0 ] && RSUDO="sudo"
        DEBIAN_FRONTEND=noninteractive $RSUDO apt-get install -y -qq --no-install-recommends \
            python3-pandas >"$LOGS/recon-apt.log" 2>&1 ||
            echo "   apt-get install python3-pandas failed (see $LOGS/recon-apt.log)" >&2
    fi
    if [ -n "$RERR" ]; then
        scenario_error reconciliation "reconciliation" "$RERR"
    else
        MANIFEST=$(tr -d ' \n' <"$RDATA/manifest.json")
        WANT_EXACT=$(jnum exact_reference_matches "$MANIFEST")
        WANT_FP=$(jnum exact_reference_fingerprint "$MANIFEST")
        wait_quiet
        RJSON=$("$RBENCH" --settlement "$RDATA/settlement.csv" --ledger "$RDATA/ledger.csv" 2>"$LOGS/recon-bench.log" | tail -1)
        BJSON=$("$RPY" "$ROOT/bench/recon/baseline.py" "$RDATA/settlement.csv" "$RDATA/ledger.csv" 2>"$LOGS/recon-baseline.log" | tail -1)
        R_TOTAL=$(jnum total_s "$RJSON")
        R_PARSE=$(jnum parse_s "$RJSON")
        R_MATCH=$(jnum match_s "$RJSON")
        R_RSS=$(jnum peak_rss_kb "$RJSON")
        R_EXACT=$(jnum exact_reference_matches "$RJSON")
        R_FP=$(jnum exact_reference_fingerprint "$RJSON")
        B_TOTAL=$(jnum total_s "$BJSON")
        B_PARSE=$(jnum parse_s "$BJSON")
        B_MATCH=$(jnum match_s "$BJSON")
        B_RSS=$(jnum peak_rss_kb "$BJSON")
        B_EXACT=$(jnum exact_reference_matches "$BJSON")
        B_FP=$(jnum exact_reference_fingerprint "$BJSON")
        R_RSS_MB=$(awk -v k="${R_RSS:-0}" 'BEGIN { printf "%.0f", k / 1024 }')
        B_RSS_MB=$(awk -v k="${B_RSS:-0}" 'BEGIN { printf "%.0f", k / 1024 }')
        RATIO=$(awk -v b="${B_TOTAL:-0}" -v r="${R_TOTAL:-0}" 'BEGIN { if (r > 0 && b > 0) printf "%.1f", b / r; else print "null" }')
        V=MISS
        if [ -n "$R_TOTAL" ] && [ "$(verdict "$R_TOTAL" "<=" 2)" = PASS ] &&
            [ "$(verdict "$R_RSS_MB" "<=" 1024)" = PASS ]; then
            V=PASS
        fi
        EXACT=PASS
        if [ -z "$R_EXACT" ] || [ "$R_EXACT" != "$WANT_EXACT" ] || [ "$R_FP" != "$WANT_FP" ]; then
            EXACT=FAIL
        fi
        if [ -z "$B_EXACT" ] || [ "$B_EXACT" != "$WANT_EXACT" ] || [ "$B_FP" != "$WANT_FP" ]; then
            EXACT=FAIL
        fi
        if [ "$EXACT" = FAIL ]; then
            V=FAIL
            ERRORS=$((ERRORS + 1))
        fi
        echo "   paybridge: ${R_TOTAL:-?} s (load ${R_PARSE:-?} + match ${R_MATCH:-?}), peak RSS ${R_RSS_MB} MB  target <= 2 s, <= 1024 MB  $V"
        echo "   pandas:    ${B_TOTAL:-not run} s (read ${B_PARSE:-?} + merge ${B_MATCH:-?}), peak RSS ${B_RSS_MB} MB, rule 1 only; paybridge is ${RATIO}x faster with all seven rules and the breaks"
        echo "   exact reference matches $EXACT: paybridge ${R_EXACT:-?}, pandas ${B_EXACT:-?}, planted ${WANT_EXACT:-?}; fingerprints paybridge ${R_FP:-?} pandas ${B_FP:-?} planted ${WANT_FP:-?}"
        echo "   matches $(grep -o '"matches":{[^}]*}' <<<"$RJSON" | cut -d: -f2- | tr -d '"{}')"
        echo "   breaks  $(grep -o '"breaks":{[^}]*}' <<<"$RJSON" | cut -d: -f2- | tr -d '"{}')"
        echo "   planted $(grep -o '"planted_breaks":{[^}]*}' <<<"$MANIFEST" | cut -d: -f2- | tr -d '"{}')"
        # the same run with the ledger read from a SQLite store instead of its CSV
        # (the target counts "store reads"); the import into the db is untimed
        wait_quiet
        SJSON=$("$RBENCH" --settlement "$RDATA/settlement.csv" --ledger "$RDATA/ledger.csv" \
            --ledger-db "$RDATA/ledger.db" 2>>"$LOGS/recon-bench.log" | tail -1)
        S_TOTAL=$(jnum total_s "$SJSON")
        S_RSS_MB=$(awk -v k="$(jnum peak_rss_kb "$SJSON")" 'BEGIN { printf "%.0f", k / 1024 }')
        SV=MISS
        if [ -n "$S_TOTAL" ] && [ "$(verdict "$S_TOTAL" "<=" 2)" = PASS ] &&
            [ "$(verdict "$S_RSS_MB" "<=" 1024)" = PASS ]; then
            SV=PASS
        fi
        if [ -z "$SJSON" ] || [ "$(grep -o '"digest":"[0-9a-f]*"' <<<"$SJSON")" != "$(grep -o '"digest":"[0-9a-f]*"' <<<"$RJSON")" ]; then
            SV=FAIL
            ERRORS=$((ERRORS + 1))
        fi
        echo "   ledger from SQLite: ${S_TOTAL:-?} s, peak RSS ${S_RSS_MB} MB, same digest as the CSV run: $SV"
        ROWS+=("reconciliation, store|${S_TOTAL:-?} s, ${S_RSS_MB} MB; ledger read from SQLite|<= 2 s, 1 GB|$SV")
        [ -n "$RJSON" ] || echo "   pb_recon_bench printed nothing: $(tail -1 "$LOGS/recon-bench.log")" >&2
        [ -n "$BJSON" ] || echo "   baseline.py printed nothing: $(tail -1 "$LOGS/recon-baseline.log")" >&2
        ROWS+=("reconciliation ${RLABEL}x${RLABEL}|${R_TOTAL:-?} s, ${R_RSS_MB} MB; pandas ${B_TOTAL:-?} s (${RATIO}x); exact $EXACT|<= 2 s, 1 GB|$V")
        RESULTS+=("\"reconciliation\":{\"lines\":$RECON_LINES,\"seed\":$RECON_SEED,\"engine\":${RJSON:-null},\"baseline\":${BJSON:-null},\"planted_exact_reference_matches\":${WANT_EXACT:-null},\"ratio\":$RATIO,\"exact\":\"$EXACT\",\"target_s\":2,\"target_rss_mb\":1024,\"verdict\":\"$V\"}")
    fi
fi

# ---- summary ----------------------------------------------------------------------------
echo
echo "summary (nproc=$NPROC, $CPU_MODEL, store on $FS, commit $COMMIT$DIRTY)"
printf '%-24s %-58s %-14s %s\n' scenario measured target verdict
for row in "${ROWS[@]}"; do
    IFS='|' read -r n m t v <<<"$row"
    printf '%-24s %-58s %-14s %s\n' "$n" "$m" "$t" "$v"
done
{
    printf '{"when":"%s","commit":"%s%s","machine":{"nproc":%s,"cpu_model":"%s","mem_gb":%s,"kernel":"%s","store_fs":"%s"},"scenarios":{' \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$COMMIT" "$DIRTY" "$NPROC" "$CPU_MODEL" "$MEM_GB" "$KERNEL" "$FS"
    (IFS=,; printf '%s' "${RESULTS[*]}")
    printf '},"scenarios_started_on_a_busy_machine":%s,"crashes":[' "$NOT_QUIET"
    for ((i = 0; i < ${#CRASHES[@]}; i++)); do
        printf '%s"%s"' "$([ $i -gt 0 ] && echo ,)" "${CRASHES[$i]}"
    done
    printf ']}\n'
} >"$OUT/results-latest.json"
[ "$NOT_QUIET" -gt 0 ] && echo "note: $NOT_QUIET scenario(s) started while other work kept the machine busy; their numbers are pessimistic"
for c in "${CRASHES[@]}"; do
    echo "CRASH: $c"
done
echo "results: $OUT/results-latest.json (logs in $LOGS)"
[ "$ERRORS" = 0 ]
