#!/usr/bin/env bash
# hetero-lab.sh — run a Concord program on N "hosts" (network namespaces) whose links differ in speed.
#
#   hetero-lab.sh [--slow-mbit 20] [--fast-mbit 100] [--ranks 4] [--timeout 600] -- PROGRAM [ARGS...]
#
# e.g.
#   Tests/lab/hetero-lab.sh -- .build/release/concord-bench allreduce -b 1M -e 16M -f 4 -n 3 -w 1 -c 1
#   CONCORD_TRANSPORT=tcp Tests/lab/hetero-lab.sh --slow-mbit 100 -- .build/release/concord-train --quiet
#
# The lab (as in discovery-lab.sh, nothing is created in this machine's own network namespace):
#
#   namespace chl<PID>-br     br0 (a Linux bridge = the switch), 10.77.0.254/24 (measurement only)
#   namespace chl<PID>-<k>    eth0 = 10.77.0.(k+1)/24, k = 0..N-1; its veth peer "h<k>" is a port of br0
#
# The script's PID in the names keeps parallel runs, and leftovers of a run killed with SIGKILL, apart;
# such leftovers (namespaces chl<PID>-* and /tmp/hetero-lab.<PID>.* whose PID is gone) are removed at the
# start of the next run.
#
# Shaping: host 0's link runs at --slow-mbit, every other host's at --fast-mbit, in both directions:
# tbf on eth0 inside the host (the host's egress) and on h<k> in the bridge namespace (the bridge's
# egress toward the host = the host's ingress). A path between two hosts is limited by the slower of
# their two links. Before the program runs, a ~1.5 s TCP transfer per direction (all hosts at once,
# python3) measures every link between its host and the bridge's own address, i.e. through exactly one
# shaper, and prints the rates (TCP payload, so ≈ 95% of the tbf rate, which counts Ethernet frames).
#
# Then PROGRAM runs as rank k in namespace k, all ranks at once, with Concord's environment contract:
#   CONCORD_RANK=k CONCORD_WORLD_SIZE=N CONCORD_LOCAL_RANK=0 CONCORD_LOCAL_WORLD_SIZE=1
#   CONCORD_MASTER_ADDR=10.77.0.1 CONCORD_MASTER_PORT=29650 CONCORD_HOST=10.77.0.(k+1)
#   CONCORD_NODE=host-k (one node per namespace: ranks never pair up over shared memory)
#   CONCORD_SECRET=<32 random bytes as hex, the same for all ranks>
# Every other CONCORD_* variable set by the caller (CONCORD_TRANSPORT, CONCORD_PEER_TIMEOUT, …) is passed
# to every rank; a caller's CONCORD_SECRET, CONCORD_SECRET_FILE or CONCORD_INSECURE replaces the
# generated secret. Each rank's stdout and stderr reach the script's stdout and stderr, every line
# prefixed "[rank k] " (a program that buffers its stdout when it is a pipe shows it when it exits).
#
# Exit status: 124 when --timeout ran out (then every rank is killed, and the script says so);
# otherwise rank 0's status if it is non-zero, else the first non-zero status of another rank, else 0.
# Once a rank has failed, the others get LAB_GRACE seconds (default 30) to finish before they are killed.
# --timeout bounds the whole run: lab setup, link measurement and program.
#
# Cleanup always (trap on EXIT, INT, TERM): every process in the lab's namespaces is killed, the
# namespaces are deleted (the veths and the bridge go with them), the temporary directory is removed.
# Not root: prints "hetero-lab: skipped (needs root for network namespaces)" and exits 0.
set -euo pipefail
{ # One compound command: bash reads all of it before running any, so editing the file cannot upset a run.

say() { printf 'hetero-lab: %s\n' "$*"; }
die() {
    printf 'hetero-lab: error: %s\n' "$*" >&2
    exit 2
}
usage() {
    cat <<'EOF'
usage: hetero-lab.sh [--slow-mbit 20] [--fast-mbit 100] [--ranks 4] [--timeout 600] [--drift S:K:R] -- PROGRAM [ARGS...]
  --slow-mbit R   rate of host 0's link, both directions, in Mbit/s (default 20)
  --drift S:K:R   S seconds after the program started, reshape host K's link to R Mbit/s (both directions)
  --fast-mbit R   rate of the other hosts' links, both directions, in Mbit/s (default 100)
  --ranks N       number of hosts = ranks, 1..200 (default 4)
  --timeout S     seconds the whole run may take (default 600); then every rank is killed, exit 124
Caller's CONCORD_* variables are passed to every rank. Needs root (network namespaces).
EOF
}

if [[ $(id -u) != 0 ]]; then
    say "skipped (needs root for network namespaces)"
    exit 0
fi

# ---------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------
SLOW=20
FAST=100
DRIFT="" # SECONDS:HOST:MBIT: that long after the start, reshape the host's link (a device walking away)
RANKS=4
TIMEOUT=600
while (($# > 0)); do
    case $1 in
    --slow-mbit | --fast-mbit | --ranks | --timeout | --drift)
        (($# >= 2)) || die "$1 needs a value"
        opt=$1 val=$2
        shift 2
        ;;
    --slow-mbit=* | --fast-mbit=* | --ranks=* | --timeout=* | --drift=*)
        opt=${1%%=*} val=${1#*=}
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    --)
        shift
        break
        ;;
    *)
        usage >&2
        die "unknown argument '$1' (the program comes after --)"
        ;;
    esac
    case $opt in
    --slow-mbit | --fast-mbit)
        [[ $val =~ ^[0-9]+(\.[0-9]+)?$ ]] && awk -v r="$val" 'BEGIN { exit !(r >= 0.1 && r <= 100000) }' ||
            die "$opt $val: wanted a rate in Mbit/s between 0.1 and 100000"
        [[ $opt == --slow-mbit ]] && SLOW=$val || FAST=$val
        ;;
    --ranks)
        [[ $val =~ ^[0-9]+$ ]] && ((10#$val >= 1 && 10#$val <= 200)) || die "--ranks $val: wanted 1..200"
        RANKS=$((10#$val))
        ;;
    --timeout)
        [[ $val =~ ^[0-9]+$ ]] && ((10#$val >= 1)) || die "--timeout $val: wanted a whole number of seconds ≥ 1"
        TIMEOUT=$((10#$val))
        ;;
    --drift)
        [[ $val =~ ^[0-9]+:[0-9]+:[0-9]+(\.[0-9]+)?$ ]] || die "--drift $val: wanted SECONDS:HOST:MBIT, e.g. 20:2:20"
        DRIFT=$val
        ;;
    esac
done
(($# > 0)) || {
    usage >&2
    die "no program given (after --)"
}
PROGRAM=$1
shift
command -v "$PROGRAM" >/dev/null 2>&1 || die "program not found: $PROGRAM"
[[ $PROGRAM == */* ]] && PROGRAM=$(cd "$(dirname "$PROGRAM")" && pwd)/$(basename "$PROGRAM")

for tool in ip tc timeout awk sed od; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found"
done
PYTHON=/usr/bin/python3 # the distribution's python starts in ~35 ms; a pyenv shim takes ~130 ms
[[ -x $PYTHON ]] || PYTHON=$(command -v python3) || die "python3 not found (needed to measure the links)"

readonly START=$SECONDS
readonly DEADLINE=$((START + TIMEOUT))
readonly LAB=chl$$ # namespaces: $LAB-br, $LAB-0 … $LAB-<N-1>
readonly NET=10.77.0
readonly BRIDGE_ADDR=$NET.254
readonly MASTER_PORT=29650
readonly GRACE=${LAB_GRACE:-30}

# ---------------------------------------------------------------------------------------------------
# Cleanup
# ---------------------------------------------------------------------------------------------------
RANK_PIDS=()   # per rank: the background subshell that runs it and its two prefixers
HELPER_PIDS=() # measurement processes
WORK=""

ns_of() { ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$1-" || true; }

kill_namespace_processes() { # kill_namespace_processes SIGNAL NS...
    local sig=$1 ns pid
    shift
    for ns in "$@"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "-$sig" "$pid" 2>/dev/null || true; done
    done
}

teardown() {
    local pid
    # Everything running in a lab namespace was started by this script: the ranks, their children, the
    # measurement helpers. Killing them ends the rank wrappers and the prefixers too (end of their pipes).
    kill_namespace_processes KILL $(ns_of "$LAB")
    for pid in "${RANK_PIDS[@]}" "${HELPER_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "${RANK_PIDS[@]}" "${HELPER_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    RANK_PIDS=()
    HELPER_PIDS=()
    local ns
    for ns in $(ns_of "$LAB"); do ip netns delete "$ns" 2>/dev/null || true; done
}

on_exit() {
    local rc=$?
    trap - EXIT INT TERM HUP PIPE
    teardown 2>/dev/null
    [[ -n $WORK && -d $WORK ]] && rm -rf "$WORK"
    local left
    left=$(ns_of "$LAB" | tr '\n' ' ')
    [[ -z $left ]] || printf 'hetero-lab: warning: namespaces left behind: %s\n' "$left" >&2
    exit "$rc"
}
trap on_exit EXIT
trap 'say "interrupted (SIGINT): killing every rank, removing the lab" >&2; exit 130' INT
trap 'say "terminated (SIGTERM): killing every rank, removing the lab" >&2; exit 143' TERM
trap 'exit 129' HUP  # the terminal went away
trap 'exit 141' PIPE # our stdout went away (e.g. `| head`): clean up rather than die on the spot

sweep_stale() { # namespaces chl<PID>-* of earlier runs whose script is gone (e.g. killed with SIGKILL)
    local ns pid
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^chl[0-9]+-' || true); do
        pid=${ns#chl}
        pid=${pid%%-*}
        [[ $pid == "$$" ]] && continue
        [[ -d /proc/$pid ]] && continue # a run still going (or a reused PID: leave it alone)
        kill_namespace_processes KILL "$ns"
        ip netns delete "$ns" 2>/dev/null && say "removed a leftover namespace: $ns"
    done
    local dir
    for dir in /tmp/hetero-lab.[0-9]*.*; do # their temporary directories
        [[ -d $dir ]] || continue
        pid=${dir#/tmp/hetero-lab.}
        pid=${pid%%.*}
        [[ $pid =~ ^[0-9]+$ && $pid != "$$" && ! -d /proc/$pid ]] && rm -rf "$dir"
    done
}
sweep_stale

WORK=$(mktemp -d "/tmp/hetero-lab.$$.XXXXXX")

# ---------------------------------------------------------------------------------------------------
# The lab
# ---------------------------------------------------------------------------------------------------
rate_of() { # rate_of K: the link rate of host K in Mbit/s
    if (($1 == 0)); then echo "$SLOW"; else echo "$FAST"; fi
}

# tbf parameters for a rate (Mbit/s):
#   burst   = max(2 ms at the rate, 8 full frames = 12112 bytes): 12112 B at 20 Mbit (≈ 4.8 ms), 25000 B at
#             100 Mbit. The bucket must hold at least one whole frame, and a few more keep the kernel's
#             GSO/TSO bursts (veths pass up to 64 KiB super-packets; tbf splits any larger than the
#             bucket) and timer jitter from costing rate; much more than a couple of ms would let short
#             collectives run at line rate (~10 Gbit/s over veth) and hide the shaping.
#   latency = 50 ms: the longest a packet may wait in tbf's queue (queue limit = rate × 50 ms + burst,
#             ≈ 137 KB at 20 Mbit, ≈ 650 KB at 100 Mbit). The unloaded round trip between namespaces is
#             ≈ 0.1 ms, so this is hundreds of bandwidth-delay products: TCP keeps the link busy without
#             drops from a too-short queue, while queueing delay on a saturated link stays bounded.
readonly TBF_LATENCY=50ms
burst_of() { awk -v r="$1" 'BEGIN { b = r * 1e6 / 8 * 0.002; if (b < 8 * 1514) b = 8 * 1514; printf "%d", b }'; }

build_lab() {
    local br=$LAB-br k ns rate burst
    ip netns add "$br"
    ip -n "$br" link set lo up
    ip -n "$br" link add br0 type bridge
    ip -n "$br" link set br0 up
    ip -n "$br" addr add "$BRIDGE_ADDR/24" dev br0 # the measurement end of every link
    for ((k = 0; k < RANKS; k++)); do
        ns=$LAB-$k
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        # The veth is created with both ends already in their namespaces: nothing appears here.
        ip link add eth0 netns "$ns" type veth peer name "h$k" netns "$br"
        ip -n "$br" link set "h$k" master br0
        ip -n "$br" link set "h$k" up
        ip -n "$ns" addr add "$NET.$((k + 1))/24" dev eth0
        ip -n "$ns" link set eth0 up
        rate=$(rate_of "$k")
        burst=$(burst_of "$rate")
        tc -n "$ns" qdisc add dev eth0 root tbf rate "${rate}mbit" burst "$burst" latency "$TBF_LATENCY"
        tc -n "$br" qdisc add dev "h$k" root tbf rate "${rate}mbit" burst "$burst" latency "$TBF_LATENCY"
    done
}

# ---------------------------------------------------------------------------------------------------
# Link measurement
# ---------------------------------------------------------------------------------------------------
cat >"$WORK/rate.py" <<'PY'
import socket, sys, threading, time

def recv(addr, port, conns, warm, window):
    """Accept `conns` connections; on each, skip `warm` s after the first byte, then count bytes for
    `window` s and close. Prints "peer-address Mbit/s" per connection."""
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port))
    ls.listen(64)
    ls.settimeout(5)
    out, lock = [], threading.Lock()

    def serve(c, peer):
        c.settimeout(3)
        buf = bytearray(1 << 16)
        first = start = None
        counted = 0
        try:
            while True:
                n = c.recv_into(buf)
                if n == 0:
                    break
                now = time.monotonic()
                if first is None:
                    first = now
                elif start is None:
                    if now >= first + warm:
                        start, counted = now, 0
                else:
                    counted += n
                    if now >= start + window:
                        break
        except OSError:
            pass
        end = time.monotonic()
        rate = counted * 8 / (end - start) / 1e6 if start is not None and end > start else 0.0
        with lock:
            out.append((peer, rate))
        c.close()

    threads = []
    for _ in range(conns):
        c, (peer, _) = ls.accept()
        t = threading.Thread(target=serve, args=(c, peer))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    for peer, rate in out:
        print(f"{peer} {rate:.1f}")

def send(addr, port, limit):
    """Connect (retrying until the receiver listens) and send until the receiver closes or `limit` s."""
    end = time.monotonic() + limit
    while True:
        try:
            s = socket.create_connection((addr, port), timeout=1)
            break
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.02)
    s.settimeout(limit)
    block = b"\0" * (1 << 16)
    try:
        while time.monotonic() < end:
            s.sendall(block)
    except OSError:
        pass  # the receiver closed: done

if sys.argv[1] == "recv":
    recv(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]))
else:
    send(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
PY

readonly WARM=0.3 WINDOW=1.2 # per direction: ≈ 0.3 s ramp-up + 1.2 s counted
py() { # py NS ARGS...: the helper in a namespace, bounded
    timeout -k 1 8 ip netns exec "$1" "$PYTHON" "$WORK/rate.py" "${@:2}"
}

declare -A UP=() DOWN=()
measure_links() {
    local k pid port=5201
    # Up: every host sends to the bridge's address at once (one shaper each: the host's eth0).
    py "$LAB-br" recv "$BRIDGE_ADDR" $port "$RANKS" $WARM $WINDOW >"$WORK/up" 2>"$WORK/up.err" &
    local recv_pid=$!
    HELPER_PIDS+=("$recv_pid")
    for ((k = 0; k < RANKS; k++)); do
        py "$LAB-$k" send "$BRIDGE_ADDR" $port 6 >/dev/null 2>&1 &
        HELPER_PIDS+=($!)
    done
    wait "$recv_pid" || say "warning: upward measurement failed: $(head -c 300 "$WORK/up.err")" >&2
    for pid in "${HELPER_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    HELPER_PIDS=()
    # Down: the bridge namespace sends to every host at once (one shaper each: the bridge port h<k>).
    local -a recv_pids=()
    for ((k = 0; k < RANKS; k++)); do
        py "$LAB-$k" recv "$NET.$((k + 1))" $port 1 $WARM $WINDOW >"$WORK/down.$k" 2>"$WORK/down.$k.err" &
        recv_pids+=($!)
        HELPER_PIDS+=($!)
    done
    for ((k = 0; k < RANKS; k++)); do
        py "$LAB-br" send "$NET.$((k + 1))" $port 6 >/dev/null 2>&1 &
        HELPER_PIDS+=($!)
    done
    for pid in "${recv_pids[@]}"; do wait "$pid" || true; done
    for pid in "${HELPER_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    HELPER_PIDS=()
    local peer rate
    while read -r peer rate; do
        [[ $peer == "$NET".* ]] && UP[$((${peer##*.} - 1))]=$rate
    done <"$WORK/up"
    for ((k = 0; k < RANKS; k++)); do
        read -r peer rate <"$WORK/down.$k" 2>/dev/null && DOWN[$k]=$rate || true
    done
}

report_links() { # prints one line per host; returns 1 when some link is clearly not shaped
    local k rate up down verdict bad=0
    say "links (TCP payload rate, host <-> bridge, ${WINDOW} s each, all hosts at once):"
    for ((k = 0; k < RANKS; k++)); do
        rate=$(rate_of "$k")
        up=${UP[$k]:-failed}
        down=${DOWN[$k]:-failed}
        # Payload is ≈ 95% of the shaped frame rate; below 70% is a busy machine, above 130% no shaping.
        verdict=$(awk -v r="$rate" -v u="$up" -v d="$down" 'BEGIN {
            if (u == "failed" || d == "failed") { print "MEASUREMENT FAILED"; exit }
            if (u > 1.3 * r || d > 1.3 * r) { print "NOT SHAPED"; exit }
            if (u < 0.7 * r || d < 0.7 * r) { print "slow (busy machine?)"; exit }
            print "ok" }')
        [[ $verdict == "NOT SHAPED" ]] && bad=1
        say "  host $k $NET.$((k + 1))  tbf ${rate} Mbit/s burst $(burst_of "$rate") B latency $TBF_LATENCY:" \
            "out $up Mbit/s, in $down Mbit/s  [$verdict]"
    done
    return $bad
}

# ---------------------------------------------------------------------------------------------------
# The ranks
# ---------------------------------------------------------------------------------------------------
SECRET_ENV=()
if [[ -z ${CONCORD_SECRET:-}${CONCORD_SECRET_FILE:-}${CONCORD_INSECURE:-} ]]; then
    SECRET_ENV=("CONCORD_SECRET=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')")
fi
readonly LAB_VARS="CONCORD_RANK CONCORD_WORLD_SIZE CONCORD_LOCAL_RANK CONCORD_LOCAL_WORLD_SIZE CONCORD_MASTER_ADDR CONCORD_MASTER_PORT CONCORD_HOST CONCORD_NODE"
PASSED=()
while read -r var; do
    [[ $var == CONCORD_* && " $LAB_VARS " != *" $var "* ]] && PASSED+=("$var")
done < <(compgen -e | sort)

start_rank() { # start_rank K SECONDS: PROGRAM as rank K in namespace K, output prefixed, status in $WORK/rc.K
    local k=$1 limit=$2 prefix="[rank $1] "
    shift 2
    local -a envs=(
        "CONCORD_RANK=$k" "CONCORD_WORLD_SIZE=$RANKS" "CONCORD_LOCAL_RANK=0" "CONCORD_LOCAL_WORLD_SIZE=1"
        "CONCORD_MASTER_ADDR=$NET.1" "CONCORD_MASTER_PORT=$MASTER_PORT"
        "CONCORD_HOST=$NET.$((k + 1))" "CONCORD_NODE=host-$k"
        "${SECRET_ENV[@]}"
    )
    # stderr → the inner pipe (prefixed onto our stderr), stdout → fd 3 → the outer pipe (onto our stdout).
    # The caller's CONCORD_* variables are inherited; the lab's own ones above override any of the caller's.
    # timeout(1) is only a backstop (the script kills the ranks itself at the deadline).
    (
        trap - EXIT INT TERM HUP PIPE
        set +e
        {
            {
                {
                    timeout -k 3 "$limit" ip netns exec "$LAB-$k" env "${envs[@]}" "$PROGRAM" "$@" </dev/null 2>&4 4>&-
                    echo $? >"$WORK/rc.$k"
                } 4>&2 2>/dev/null # the program's stderr, not bash's "Killed …" when a rank is killed
            } 2>&1 1>&3 3>&- | sed -u "s/^/$prefix/" >&2
        } 3>&1 | sed -u "s/^/$prefix/"
    ) &
    RANK_PIDS[k]=$!
}

# ---------------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------------
say "lab $LAB: $RANKS hosts on one bridge; host 0 at $SLOW Mbit/s, the others at $FAST Mbit/s (both directions)"
build_lab
t0=$SECONDS
measure_links
shaped=0
report_links || shaped=1
say "  (measured in $((SECONDS - t0)) s)"
((shaped == 0)) || die "the links are not shaped as asked (see above)"

remaining=$((DEADLINE - SECONDS))
if ((remaining <= 0)); then
    say "timeout: --timeout $TIMEOUT s ran out before the program started" >&2
    exit 124
fi
say "running as ranks 0..$((RANKS - 1)) (master $NET.1:$MASTER_PORT, timeout ${remaining} s left): $PROGRAM $*"
((${#PASSED[@]} == 0)) || say "passing through to every rank: ${PASSED[*]}"
[[ ${#SECRET_ENV[@]} -gt 0 ]] || say "using the caller's CONCORD_SECRET / CONCORD_SECRET_FILE / CONCORD_INSECURE"

t0=$SECONDS
for ((k = 0; k < RANKS; k++)); do start_rank "$k" $((remaining + 5)) "$@"; done
if [[ -n $DRIFT ]]; then
    IFS=: read -r drift_after drift_host drift_rate <<<"$DRIFT"
    ((drift_host < RANKS)) || die "--drift: no host $drift_host"
    (
        trap - EXIT INT TERM HUP PIPE
        sleep "$drift_after"
        burst=$(burst_of "$drift_rate")
        tc -n "$LAB-$drift_host" qdisc change dev eth0 root tbf rate "${drift_rate}mbit" burst "$burst" latency "$TBF_LATENCY" &&
            tc -n "$LAB-br" qdisc change dev "h$drift_host" root tbf rate "${drift_rate}mbit" burst "$burst" latency "$TBF_LATENCY" &&
            say "drift: host $drift_host's link is now ${drift_rate} Mbit/s (after ${drift_after} s)"
    ) 2>/dev/null &
    HELPER_PIDS+=($!)
fi

declare -A RC=()
FIRST_FAIL="" # the first rank seen to exit non-zero
FAIL_AT=0
TIMED_OUT=0
while :; do
    left=0
    for ((k = 0; k < RANKS; k++)); do
        [[ -n ${RC[$k]:-} ]] && continue
        if kill -0 "${RANK_PIDS[k]}" 2>/dev/null; then
            left=$((left + 1))
            continue
        fi
        wait "${RANK_PIDS[k]}" 2>/dev/null || true
        RC[$k]=$(cat "$WORK/rc.$k" 2>/dev/null || echo 255)
        if [[ ${RC[$k]} != 0 && -z $FIRST_FAIL ]]; then
            FIRST_FAIL=$k
            FAIL_AT=$SECONDS
        fi
    done
    ((left == 0)) && break
    if ((SECONDS >= DEADLINE)); then
        TIMED_OUT=1
        break
    fi
    if [[ -n $FIRST_FAIL ]] && ((SECONDS - FAIL_AT >= GRACE)); then
        say "rank $FIRST_FAIL failed (exit ${RC[$FIRST_FAIL]}) $GRACE s ago; killing the $left ranks still running" >&2
        break
    fi
    sleep 0.2
done

still=""
for ((k = 0; k < RANKS; k++)); do [[ -n ${RC[$k]:-} ]] || still+=" $k"; done
if [[ -n $still ]]; then
    ((TIMED_OUT)) && say "timeout: --timeout $TIMEOUT s ran out; killing ranks$still" >&2
    # TERM first (a rank may report where it was), KILL whatever is left 2 s later.
    kill_namespace_processes TERM $(ns_of "$LAB")
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        [[ -z $(for ((k = 0; k < RANKS; k++)); do ip netns pids "$LAB-$k" 2>/dev/null; done) ]] && break
        sleep 0.2
    done
    kill_namespace_processes KILL $(ns_of "$LAB")
    for k in $still; do
        wait "${RANK_PIDS[k]}" 2>/dev/null || true
        RC[$k]="killed"
    done
fi

summary=""
for ((k = 0; k < RANKS; k++)); do summary+=" $k=${RC[$k]}"; done
say "exit statuses (rank=status):$summary; $((SECONDS - t0)) s"
if ((TIMED_OUT)); then
    exit 124
elif [[ ${RC[0]} != 0 ]]; then
    [[ ${RC[0]} =~ ^[0-9]+$ ]] && exit "${RC[0]}"
    exit 1
elif [[ -n $FIRST_FAIL ]]; then
    exit "${RC[$FIRST_FAIL]}"
fi
exit 0
}
