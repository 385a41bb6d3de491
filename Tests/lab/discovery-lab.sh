#!/usr/bin/env bash
# discovery-lab.sh — Concord's discovery end to end, with real processes on hosts made of namespaces.
#
# Idea: a network namespace is a host as far as the network goes: its own interfaces, addresses, routes,
# sockets and multicast memberships. A Linux bridge, alone in a namespace of its own, is a switch (an
# access point); a veth pair is a cable. The lab builds small LANs out of these, entirely inside
# namespaces (nothing is added to this machine's own namespace), and runs ONE Concord member per host:
#
#   concord run --discover --job lab --world-size 4 -- concord-bench allreduce ...
#
# with no addresses given: the members must find each other by UDP multicast beacons, agree on the
# group, the ranks and the ring, and then run the benchmark over TCP between the namespaces. Each member
# also gets its own UTS namespace (host name clab-hN), so the members look like four machines to
# Concord too (a shared host name would make them pair up over shared memory instead of the network).
#
#   case 1  one LAN          clab-br: br0 ── eth0 of clab-h1..h4 (10.77.1.1-4/24)
#           all 4 exit 0 within the deadline, rank 0 prints "# Out of bounds values : 0 OK",
#           the 4 members print the same "concord: ring:" line and the same rank → node/host:port lines
#           (ranks are positions in the agreed ring, so the ring line alone is always 0 → 1 → … → 0)
#   case 2  two access points  clab-bra: br0 ── h1, h2      clab-brb: br0 ── h3, h4
#           joined by one veth "trunk", tbf 20mbit each way (host links unshaped, or LAB_ACCESS_RATE)
#           the chosen ring crosses between {h1,h2} and {h3,h4} exactly twice (never four times);
#           the round trips the members measured are printed, with a note when they do not tell the
#           trunk apart (then the ring was not chosen for the trunk and a pass is luck: see README.md)
#   case 3  silent partition  case 1's LAN, long benchmark, CONCORD_PEER_TIMEOUT=3; once it runs, a
#           classic-BPF tc filter drops every packet leaving or entering clab-h4 (no FIN, no RST):
#           the other three exit non-zero within LAB_PARTITION_LIMIT (15 s), each naming h4's rank
#
# Before any Concord run, plain-tool checks prove the plumbing (python3): every host reaches every
# other over TCP, and every host hears every other's UDP multicast on Concord's beacon group. Case 2 also
# prints TCP-connect round trips inside an access point and across the trunk, and the trunk's rate.
#
# Without `--discover` in `concord run --help`, only the plumbing checks run (then: skipped, exit 0).
# Not root, or `ip netns` unusable: "discovery-lab: skipped: <reason>", exit 0.
#
# Environment:
#   CONCORD_BIN           directory holding concord and concord-bench (default: the release bin path)
#   LAB_CASES             which cases to run, e.g. "1 3" (default "1 2 3")
#   LAB_DEADLINE          seconds a case-1/2 job may take, discovery included (default 120)
#   LAB_PARTITION_LIMIT   seconds the survivors of case 3 may take to exit (default 15)
#   LAB_TRUNK_RATE        rate of case 2's trunk (default 20mbit)
#   LAB_ACCESS_RATE       rate of every host link, e.g. 100mbit (default: unshaped)
#   LAB_TRUNK_LOAD=1      case 2: also run a bulk TCP flow each way through the trunk, from two extra
#                         namespaces, while the members measure and run (fills tbf's queue: the
#                         trunk's round trip grows by up to its 50 ms queue limit)
#   LAB_KEEP_LOGS=1       keep the log directory even when every case passes
#
# Everything created (namespaces clab-*, the veths inside them, every process started in them) is
# removed by a trap on exit, failure, Ctrl-C and SIGTERM; leftovers of an aborted run are removed first.
set -euo pipefail
{ # One compound command: bash reads all of it before running any, so editing the file cannot upset a run.

readonly LAB=clab
readonly NET=10.77.1
readonly GROUP=239.255.77.77 # Concord's default beacon group and port (BeaconService.Channel)
readonly BEACON_PORT=29577

say() { printf 'discovery-lab: %s\n' "$*"; }
skip() {
    say "skipped: $*"
    exit 0
}
die() {
    say "error: $*" >&2
    exit 2
}

# ---------------------------------------------------------------------------------------------------
# Preconditions
# ---------------------------------------------------------------------------------------------------
[[ $(id -u) == 0 ]] || skip "not root (network namespaces need CAP_NET_ADMIN)"
for tool in ip tc timeout unshare python3 od; do
    command -v "$tool" >/dev/null 2>&1 || skip "$tool not found"
done

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [[ -z ${CONCORD_BIN:-} ]]; then
    CONCORD_BIN=$(cd "$repo" && timeout 120 swift build -c release -Xcc -march=x86-64-v3 --show-bin-path 2>/dev/null) ||
        CONCORD_BIN=$repo/.build/release
fi
readonly CONCORD=$CONCORD_BIN/concord
readonly BENCH=$CONCORD_BIN/concord-bench

# The members must see only what the lab gives them: drop every rank/rendezvous variable of the caller.
while read -r var; do
    case $var in
    CONCORD_* | RANK | WORLD_SIZE | LOCAL_RANK | MASTER_ADDR | MASTER_PORT | SLURM_* | OMPI_COMM_WORLD_*) unset "$var" ;;
    esac
done < <(compgen -e)

LAB_CASES=${LAB_CASES:-1 2 3}
LAB_DEADLINE=${LAB_DEADLINE:-120}
LAB_PARTITION_LIMIT=${LAB_PARTITION_LIMIT:-15}
LAB_TRUNK_RATE=${LAB_TRUNK_RATE:-20mbit}
LAB_ACCESS_RATE=${LAB_ACCESS_RATE:-}
LAB_TRUNK_LOAD=${LAB_TRUNK_LOAD:-0}

# ---------------------------------------------------------------------------------------------------
# Cleanup: kill what runs in our namespaces, delete the namespaces (their veths go with them)
# ---------------------------------------------------------------------------------------------------
MEMBER_PIDS=()  # timeout(1) wrappers of the members: each leads a process group
HELPER_PIDS=()  # background helpers (listeners, bulk flows)

lab_namespaces() { ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${LAB}-" || true; }

kill_lab_processes() {
    local pid ns
    for pid in "${MEMBER_PIDS[@]}" "${HELPER_PIDS[@]}"; do
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    done
    # Anything still running inside a lab namespace was started by this script (or an earlier run of it).
    for ns in $(lab_namespaces); do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    done
    for pid in "${MEMBER_PIDS[@]}" "${HELPER_PIDS[@]}"; do wait "$pid" || true; done
    MEMBER_PIDS=()
    HELPER_PIDS=()
} 2>/dev/null # bash reports every job killed by a signal on its stderr: not news here

teardown() {
    local ns link
    kill_lab_processes
    for ns in $(lab_namespaces); do ip netns delete "$ns" 2>/dev/null || true; done
    # Nothing is ever created in this namespace; a veth end named clab-* here would be a leftover.
    for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E "^${LAB}-" || true); do
        ip link delete "$link" 2>/dev/null || true
    done
}

LOGS=""
KEEP_LOGS=${LAB_KEEP_LOGS:-0}
on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    teardown
    if [[ -n $LOGS && -d $LOGS ]]; then
        if [[ $rc == 0 && $KEEP_LOGS != 1 ]]; then rm -rf "$LOGS"; else say "logs: $LOGS"; fi
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'say "interrupted"; exit 130' INT
trap 'say "terminated"; exit 143' TERM

teardown # leftovers of an earlier, aborted run

if ! { ip netns add "$LAB-probe" && ip netns exec "$LAB-probe" ip link set lo up; } 2>/dev/null; then
    ip netns delete "$LAB-probe" 2>/dev/null || true
    skip "ip netns does not work here"
fi
ip netns delete "$LAB-probe"

LOGS=$(mktemp -d /tmp/discovery-lab.XXXXXX)
readonly HELPER=$LOGS/labnet.py

# ---------------------------------------------------------------------------------------------------
# labnet.py: the plain-tool side (multicast, TCP reachability, round trips, bulk flows)
# ---------------------------------------------------------------------------------------------------
cat >"$HELPER" <<'PY'
import socket, statistics, sys, threading, time

def beacon(ifaddr, seconds, group, port):
    """Send a datagram to group:port through ifaddr every 100 ms; print who else was heard."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    rx.bind(("0.0.0.0", port))
    rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(group) + socket.inet_aton(ifaddr))
    rx.settimeout(0.05)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(ifaddr))
    tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    heard, end, next_send = set(), time.monotonic() + seconds, 0.0
    while time.monotonic() < end:
        if time.monotonic() >= next_send:
            tx.sendto(b"labnet " + ifaddr.encode(), (group, port))
            next_send = time.monotonic() + 0.1
        try:
            data, (src, _) = rx.recvfrom(512)
            if data.startswith(b"labnet ") and src != ifaddr:
                heard.add(src)
        except socket.timeout:
            pass
    print(" ".join(sorted(heard)))

def listen(addr, port, seconds):
    """Accept TCP connections for `seconds`; read each to EOF, then close it."""
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port)); s.listen(64); s.settimeout(0.2)
    def drain(c):
        with c:
            while c.recv(1 << 16): pass
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            c, _ = s.accept()
            threading.Thread(target=drain, args=(c,), daemon=True).start()
        except socket.timeout:
            pass

def probe(host, port, timeout):
    """One TCP connect: 'open', 'refused' (the host answered) or 'silent'; exit 0 unless silent."""
    s = socket.socket(); s.settimeout(timeout)
    try:
        s.connect((host, port)); print("open")
    except ConnectionRefusedError:
        print("refused")
    except OSError:
        print("silent"); sys.exit(1)

def rtt(host, port, count):
    """Median and minimum time of a TCP connect (one SYN / SYN-ACK round trip), in microseconds."""
    samples = []
    for _ in range(count):
        s = socket.socket(); s.settimeout(2)
        t = time.perf_counter(); s.connect((host, port)); samples.append((time.perf_counter() - t) * 1e6)
        s.close(); time.sleep(0.01)
    print("median %.0f min %.0f" % (statistics.median(samples), min(samples)))

def send(host, port, nbytes):
    """Send nbytes and wait until the receiver has read them all; print Mbit/s."""
    s = socket.create_connection((host, port), timeout=60)
    buf, left, t = b"\0" * (1 << 16), nbytes, time.perf_counter()
    while left > 0:
        left -= s.send(buf[: min(left, len(buf))])
    s.shutdown(socket.SHUT_WR); s.recv(1)
    print("%.1f" % (nbytes * 8 / (time.perf_counter() - t) / 1e6))

def blast(host, port, seconds):
    """A bulk flow for `seconds` (background load)."""
    s = socket.create_connection((host, port), timeout=10)
    buf, end = b"\0" * (1 << 16), time.monotonic() + seconds
    while time.monotonic() < end:
        s.sendall(buf)

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "beacon": beacon(args[0], float(args[1]), args[2], int(args[3]))
elif cmd == "listen": listen(args[0], int(args[1]), float(args[2]))
elif cmd == "probe": probe(args[0], int(args[1]), float(args[2]))
elif cmd == "rtt": rtt(args[0], int(args[1]), int(args[2]))
elif cmd == "send": send(args[0], int(args[1]), int(args[2]))
elif cmd == "blast": blast(args[0], int(args[1]), float(args[2]))
else: sys.exit("labnet: unknown command " + cmd)
PY

py() { # py NAMESPACE ARGS...: run labnet.py inside a namespace
    local ns=$1
    shift
    ip netns exec "$ns" python3 "$HELPER" "$@"
}

# ---------------------------------------------------------------------------------------------------
# Topology
# ---------------------------------------------------------------------------------------------------
add_bridge() { # add_bridge NS: a namespace holding br0 (a switch; multicast flooded, no IGMP snooping)
    ip netns add "$1"
    ip -n "$1" link set lo up
    # Snooping off: with no IGMP querier on the lab LAN, snooping would rely on timers; flood instead.
    ip -n "$1" link add br0 type bridge mcast_snooping 0
    ip -n "$1" link set br0 up
}

add_host() { # add_host N BRIDGE_NS: namespace clab-hN, eth0 = NET.N/24, its peer "hN" a port of br0
    local n=$1 br=$2 ns=$LAB-h$1
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip link add eth0 netns "$ns" type veth peer name "h$n" netns "$br"
    ip -n "$br" link set "h$n" master br0
    ip -n "$br" link set "h$n" up
    ip -n "$ns" addr add "$NET.$n/24" dev eth0
    ip -n "$ns" link set eth0 up
    # Multicast leaves through eth0 (there is no default route in a lab host).
    ip -n "$ns" route add 224.0.0.0/4 dev eth0
    if [[ -n $LAB_ACCESS_RATE ]]; then # both directions: the host's egress and the bridge port's egress
        tc -n "$ns" qdisc add dev eth0 root tbf rate "$LAB_ACCESS_RATE" burst 32kbit latency 50ms
        tc -n "$br" qdisc add dev "h$n" root tbf rate "$LAB_ACCESS_RATE" burst 32kbit latency 50ms
    fi
}

one_lan() {
    add_bridge "$LAB-br"
    local n
    for n in 1 2 3 4; do add_host "$n" "$LAB-br"; done
}

two_access_points() {
    add_bridge "$LAB-bra"
    add_bridge "$LAB-brb"
    add_host 1 "$LAB-bra"
    add_host 2 "$LAB-bra"
    add_host 3 "$LAB-brb"
    add_host 4 "$LAB-brb"
    ip link add trunk netns "$LAB-bra" type veth peer name trunk netns "$LAB-brb"
    local br
    for br in "$LAB-bra" "$LAB-brb"; do
        ip -n "$br" link set trunk master br0
        ip -n "$br" link set trunk up
        # tbf on each end's egress shapes both directions of the trunk.
        tc -n "$br" qdisc add dev trunk root tbf rate "$LAB_TRUNK_RATE" burst 32kbit latency 50ms
    done
}

add_load_hosts() { # two extra hosts, one per access point, for the optional bulk flows
    local n br
    for n in 101 102; do
        br=$LAB-bra
        [[ $n == 102 ]] && br=$LAB-brb
        ip netns add "$LAB-l$n"
        ip -n "$LAB-l$n" link set lo up
        ip link add eth0 netns "$LAB-l$n" type veth peer name "l$n" netns "$br"
        ip -n "$br" link set "l$n" master br0
        ip -n "$br" link set "l$n" up
        ip -n "$LAB-l$n" addr add "$NET.$n/24" dev eth0
        ip -n "$LAB-l$n" link set eth0 up
    done
}

# ---------------------------------------------------------------------------------------------------
# Plumbing checks (plain tools): TCP between every pair, multicast from every host to every other
# ---------------------------------------------------------------------------------------------------
check_plumbing() { # prints one line per check; returns non-zero on the first failure
    local a b out want heard
    for a in 1 2 3 4; do
        for b in 1 2 3 4; do
            [[ $a == "$b" ]] && continue
            # Port 9 (discard) is closed: "refused" proves the SYN got there and the RST came back.
            if ! out=$(timeout 10 ip netns exec "$LAB-h$a" python3 "$HELPER" probe "$NET.$b" 9 2); then
                say "  plumbing: h$a cannot reach $NET.$b over TCP ($out)"
                return 1
            fi
        done
    done
    say "  plumbing: TCP between every pair of hosts: ok"
    local -a pids=()
    for a in 1 2 3 4; do
        timeout 15 ip netns exec "$LAB-h$a" python3 "$HELPER" beacon "$NET.$a" 2 "$GROUP" "$BEACON_PORT" \
            >"$LOGS/mcast-h$a" 2>&1 &
        pids+=($!)
    done
    local rc=0
    for a in "${pids[@]}"; do wait "$a" || rc=1; done
    for a in 1 2 3 4; do
        want=""
        for b in 1 2 3 4; do [[ $a == "$b" ]] || want+="$NET.$b "; done
        heard=$(cat "$LOGS/mcast-h$a")
        if [[ $rc != 0 || "$heard " != "$want" ]]; then
            say "  plumbing: h$a heard multicast on $GROUP:$BEACON_PORT from [${heard}], wanted [${want% }]"
            return 1
        fi
    done
    say "  plumbing: UDP multicast on $GROUP:$BEACON_PORT from every host to every other: ok"
}

measure_trunk() { # case 2 context: TCP-connect round trips inside an access point and across the trunk
    local port=5001 load=${1:-}
    py "$LAB-h2" listen "$NET.2" $port 60 >/dev/null 2>&1 &
    HELPER_PIDS+=($!)
    py "$LAB-h3" listen "$NET.3" $port 60 >/dev/null 2>&1 &
    HELPER_PIDS+=($!)
    sleep 0.5
    local same cross
    same=$(timeout 30 ip netns exec "$LAB-h1" python3 "$HELPER" rtt "$NET.2" $port 50) || same="failed"
    cross=$(timeout 30 ip netns exec "$LAB-h1" python3 "$HELPER" rtt "$NET.3" $port 50) || cross="failed"
    say "  round trip (TCP connect, 50 samples, µs)${load}: h1→h2 same AP: $same; h1→h3 across the trunk: $cross"
    if [[ -z $load ]]; then
        local rate
        rate=$(timeout 60 ip netns exec "$LAB-h1" python3 "$HELPER" send "$NET.3" $port 4000000) || rate="failed"
        say "  trunk rate: h1→h3 $rate Mbit/s (tbf $LAB_TRUNK_RATE)"
    fi
}

start_trunk_load() { # bulk TCP flows both ways across the trunk, between the two load hosts
    local seconds=$1
    py "$LAB-l101" listen "$NET.101" 5002 "$seconds" >/dev/null 2>&1 &
    HELPER_PIDS+=($!)
    py "$LAB-l102" listen "$NET.102" 5002 "$seconds" >/dev/null 2>&1 &
    HELPER_PIDS+=($!)
    sleep 0.5
    py "$LAB-l101" blast "$NET.102" 5002 "$seconds" >/dev/null 2>&1 &
    HELPER_PIDS+=($!)
    py "$LAB-l102" blast "$NET.101" 5002 "$seconds" >/dev/null 2>&1 &
    HELPER_PIDS+=($!)
    sleep 1
}

# ---------------------------------------------------------------------------------------------------
# Concord members
# ---------------------------------------------------------------------------------------------------
SECRET=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')

start_member() { # start_member N ENV... -- BENCH-ARGS...: one member in clab-hN, log in $LOGS
    local n=$1
    shift
    local -a envs=()
    while [[ $1 != -- ]]; do
        envs+=("$1")
        shift
    done
    shift
    # timeout(1) leads its own process group: a backstop only (TERM after MEMBER_LIMIT s, KILL 5 s later);
    # the cases wait for their own, shorter deadlines and then describe and kill what is left.
    timeout -k 5 "$MEMBER_LIMIT" ip netns exec "$LAB-h$n" \
        unshare --uts -- sh -c 'hostname "$0" && exec "$@"' "$LAB-h$n" \
        env CONCORD_SECRET="$SECRET" "${envs[@]}" \
        "$CONCORD" run --discover --job lab --world-size 4 -- "$BENCH" "$@" \
        >"$LOGS/$CASE-h$n.log" 2>&1 </dev/null &
    MEMBER_PIDS[n]=$!
}

MEMBER_LIMIT=$((LAB_DEADLINE + 300))

describe_stuck() { # describe_stuck N...: what still runs in those hosts (and zombies among its children)
    local n pid
    for n in "$@"; do
        for pid in $(ip netns pids "$LAB-h$n" 2>/dev/null); do
            say "  h$n still running: $(ps -o pid=,stat=,etime=,args= -p "$pid" 2>/dev/null | cut -c1-150)"
            ps --ppid "$pid" -o pid=,stat=,args= 2>/dev/null | awk '$2 ~ /^Z/' | while read -r line; do
                say "    child $line  ← exited (zombie), not reaped by its parent"
            done
        done
    done
}

declare -A RC=() ENDED=()
wait_members() { # wait_members SECONDS N...: until those members exited or SECONDS passed; sets RC, ENDED
    local limit=$1 n t0
    shift
    t0=$(date +%s.%N)
    local -a left=("$@")
    while ((${#left[@]} > 0)); do
        local -a still=()
        for n in "${left[@]}"; do
            if kill -0 "${MEMBER_PIDS[n]}" 2>/dev/null; then
                still+=("$n")
            else
                ENDED[$n]=$(date +%s.%N)
                RC[$n]=0
                wait "${MEMBER_PIDS[n]}" || RC[$n]=$?
            fi
        done
        left=("${still[@]+"${still[@]}"}")
        ((${#left[@]} == 0)) && break
        if awk -v a="$(date +%s.%N)" -v b="$t0" -v l="$limit" 'BEGIN { exit !(a - b > l) }'; then
            for n in "${left[@]}"; do RC[$n]=timeout; done
            describe_stuck "${left[@]}"
            return 1
        fi
        sleep 0.2
    done
}

stop_members() {
    kill_lab_processes
}

# ring_of LOG: the ranks of the "concord: ring:" line, space separated, without the closing rank 0
ring_of() {
    local line
    line=$(grep -m1 -E 'concord: ring:' "$1" 2>/dev/null) || return 1
    line=${line#*ring:}
    local -a r
    read -r -a r <<<"$(tr -c '0-9\n' ' ' <<<"$line")"
    ((${#r[@]} >= 2)) || return 1
    [[ ${r[-1]} == "${r[0]}" ]] && unset 'r[-1]'
    echo "${r[*]}"
}

# host_of_rank LOG R: N of the host (10.77.1.N) that the "concord: rank R = node … at host:port" line names
host_of_rank() {
    local line
    line=$(grep -m1 -E "concord: rank $2 = node .* at " "$1" 2>/dev/null) || return 1
    line=${line##* at }
    line=${line%:*}
    [[ $line == "$NET".* ]] || return 1
    echo "${line##*.}"
}

show_log() { # the last lines of a member's log, indented
    say "  --- $(basename "$1") (last ${2:-15} lines)"
    tail -n "${2:-15}" "$1" 2>/dev/null | sed 's/^/  | /' || true
}

pass() {
    say "case $CASE: PASS — $*"
}
join_reasons() { # REASONS, separated by "; "
    local out="" r
    for r in "${REASONS[@]}"; do out+="${out:+; }$r"; done
    echo "$out"
}
FAILED=()
fail() {
    say "case $CASE: FAIL — $*"
    FAILED+=("$CASE")
}

# A whole job (cases 1 and 2): start all four, wait, and check what every case checks about a job.
# Every problem found is added to REASONS (all are checked, so one report says everything); sets RING
# (the agreed ring, ranks separated by spaces) and HOST_OF (rank → host number) when they can be read.
declare -A HOST_OF=()
RING=""
REASONS=()
run_job() {
    local n t0=$SECONDS
    REASONS=()
    RING=""
    HOST_OF=()
    for n in 1 2 3 4; do
        start_member "$n" -- allreduce -b 1M -e 4M -f 4 -n 2 -w 1 -c 1
    done
    if wait_members "$LAB_DEADLINE" 1 2 3 4; then
        say "  all 4 members exited after $((SECONDS - t0)) s: h1=${RC[1]} h2=${RC[2]} h3=${RC[3]} h4=${RC[4]}"
    else
        stop_members
        local late=""
        for n in 1 2 3 4; do [[ ${RC[$n]} == timeout ]] && late+=" h$n"; done
        REASONS+=("not exited within $LAB_DEADLINE s:$late")
    fi
    local bad=""
    for n in 1 2 3 4; do [[ ${RC[$n]} == 0 || ${RC[$n]} == timeout ]] || bad+=" h$n=${RC[$n]}"; done
    [[ -z $bad ]] || REASONS+=("non-zero exit:$bad")

    local ring disagree=""
    for n in 1 2 3 4; do
        if ! ring=$(ring_of "$LOGS/$CASE-h$n.log"); then
            REASONS+=("h$n printed no 'concord: ring:' line")
        elif [[ -z $RING ]]; then
            RING=$ring
        elif [[ $ring != "$RING" ]]; then
            disagree+=" h$n=[$ring]"
        fi
    done
    if [[ -n $disagree ]]; then
        REASONS+=("the members disagree on the ring: [$RING]$disagree")
    elif [[ -n $RING ]]; then
        say "  ring (every member printed it): $(grep -m1 -E 'concord: ring:' "$LOGS/$CASE-h1.log" | sed 's/.*ring: *//')"
    fi
    # The ranks are positions in the agreed ring, so the ring line alone says little: the members must
    # also agree on which node holds which rank.
    local members first="" differ=""
    for n in 1 2 3 4; do
        members=$(grep -E 'concord: rank [0-9]+ = node ' "$LOGS/$CASE-h$n.log" 2>/dev/null |
            sed -E 's/.*concord: (rank [0-9]+ = node [^ ]+ at [^ ,]+).*/\1/' | sort | tr '\n' ';' || true)
        [[ -n $members ]] || continue
        if [[ -z $first ]]; then first=$members; elif [[ $members != "$first" ]]; then differ+=" h$n"; fi
    done
    [[ -z $differ ]] || REASONS+=("the members disagree on who holds which rank (unlike the first member to print them:$differ)")
    local r h seen="" log
    for n in 1 2 3 4; do # the rank lines of the first member that printed them all
        log=$LOGS/$CASE-h$n.log
        HOST_OF=()
        seen=""
        for r in 0 1 2 3; do
            h=$(host_of_rank "$log" "$r") || break
            [[ " $seen " == *" $h "* ]] && break
            seen+=" $h"
            HOST_OF[$r]=$h
        done
        ((${#HOST_OF[@]} == 4)) && break
    done
    if ((${#HOST_OF[@]} == 4)); then
        say "  ranks: $(for r in 0 1 2 3; do printf '%s=h%s ' "$r" "${HOST_OF[$r]}"; done)"
        local zero=${HOST_OF[0]}
        if grep -q '# Out of bounds values : 0 OK' "$LOGS/$CASE-h$zero.log"; then
            grep -E '^(\[rank 0\] )?\s+[0-9]+\s+[0-9]+\s+float' "$LOGS/$CASE-h$zero.log" | sed 's/^/  | /' || true
        else
            REASONS+=("rank 0 (h$zero) did not print '# Out of bounds values : 0 OK'")
        fi
    else
        HOST_OF=()
        REASONS+=("no member printed 4 lines 'concord: rank R = node … at $NET.N:port' naming 4 hosts")
    fi
    if ((${#REASONS[@]} > 0)); then
        for n in 1 2 3 4; do show_log "$LOGS/$CASE-h$n.log" 20; done
        return 1
    fi
}

# measured_rtts CASE: the round trips each member printed ("concord: rank R = … at IP:port, rtt X ms"),
# as "hA→hB X" pairs
measured_rtts() {
    local n
    for n in 1 2 3 4; do
        sed -n -E "s/.*concord: rank [0-9]+ = node .* at $NET\.([0-9]+):[0-9]+, rtt ([0-9.]+) ms.*/h$n→h\1 \2/p" \
            "$LOGS/$1-h$n.log" 2>/dev/null || true
    done
}

# ---------------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------------
HAVE_DISCOVER=0
if [[ -x $CONCORD && -x $BENCH ]]; then
    # `concord help run` too: the help must not depend on `run --help` getting past option validation.
    help=$({ timeout 20 "$CONCORD" run --help || timeout 20 "$CONCORD" help run; } 2>&1 || true)
    [[ $help == *--discover* ]] && HAVE_DISCOVER=1
else
    say "no concord and concord-bench in $CONCORD_BIN (set CONCORD_BIN, or build: swift build -c release)"
fi
((HAVE_DISCOVER)) || say "concord run has no --discover yet ($CONCORD): plumbing checks only"

case1() {
    CASE=1
    say "case 1: one LAN, 4 hosts on one bridge, discovery only"
    one_lan
    check_plumbing || {
        fail "plumbing"
        return
    }
    ((HAVE_DISCOVER)) || return 0
    if run_job; then
        pass "4 members found each other, agreed on one ring, and the all-reduce checked out"
    else
        fail "$(join_reasons)"
    fi
}

case2() {
    CASE=2
    say "case 2: two access points (h1 h2 | h3 h4), joined by one trunk at $LAB_TRUNK_RATE"
    two_access_points
    check_plumbing || {
        fail "plumbing"
        return
    }
    measure_trunk
    if [[ $LAB_TRUNK_LOAD == 1 ]]; then
        add_load_hosts
        start_trunk_load $((LAB_DEADLINE + 30))
        measure_trunk " with bulk flows through the trunk"
    fi
    ((HAVE_DISCOVER)) || {
        kill_lab_processes
        return 0
    }
    run_job || true
    local same="" cross="" pair ms
    while read -r pair ms; do
        [[ -n $pair ]] || continue
        local x=${pair%%→*} y=${pair##*→}
        if (((${x#h} <= 2) == (${y#h} <= 2))); then same+=" $pair $ms"; else cross+=" $pair $ms"; fi
    done < <(measured_rtts 2)
    say "  round trips the members measured (ms): same AP:${same:- none}"
    say "                                         across the trunk:${cross:- none}"
    # Did the measurements see the trunk at all? Only if every link across it measured slower than
    # every link inside an access point; otherwise the ring was not chosen for the trunk, and since 2 of
    # the 3 rings of 4 hosts cross it twice, a pass would be luck.
    local informed=0
    if [[ -n $same && -n $cross ]] && awk -v s="$same" -v c="$cross" 'BEGIN {
        ns = split(s, a, " "); nc = split(c, b, " "); hi = 0; lo = 1e9
        for (i = 2; i <= ns; i += 2) if (a[i] + 0 > hi) hi = a[i] + 0
        for (i = 2; i <= nc; i += 2) if (b[i] + 0 < lo) lo = b[i] + 0
        exit !(lo > hi) }'; then
        informed=1
    else
        say "  note: the members' round trips do not tell the trunk apart (tbf adds no delay to a lone small"
        say "        packet, only queueing does): the ring was not chosen for the trunk; a pass here is luck"
        say "        (2 of the 3 rings of 4 hosts cross twice). LAB_TRUNK_LOAD=1 makes the trunk measurably slower."
    fi
    if [[ -n $RING && ${#HOST_OF[@]} == 4 ]]; then
        local -a ring
        read -r -a ring <<<"$RING"
        local i a b crossings=0 path=""
        for ((i = 0; i < ${#ring[@]}; i++)); do
            a=${HOST_OF[${ring[i]}]}
            b=${HOST_OF[${ring[(i + 1) % ${#ring[@]}]}]}
            path+="h$a→"
            if (((a <= 2) != (b <= 2))); then crossings=$((crossings + 1)); fi # A: h1 h2, B: h3 h4
        done
        path+="h${HOST_OF[${ring[0]}]}"
        if ((crossings == 2)); then
            say "  the ring $path crosses the trunk twice"
        else
            REASONS+=("the ring $path crosses the trunk $crossings times (wanted 2)")
        fi
    fi
    if ((${#REASONS[@]} == 0)); then
        if ((informed)); then
            pass "the agreed ring crosses the trunk twice, and the all-reduce checked out"
        else
            pass "the agreed ring crosses the trunk twice, and the all-reduce checked out (by chance: see the note)"
        fi
    else
        fail "$(join_reasons)"
    fi
    kill_lab_processes
}

case3() {
    CASE=3
    say "case 3: silent partition of h4 while the job runs (CONCORD_PEER_TIMEOUT=3)"
    one_lan
    check_plumbing || {
        fail "plumbing"
        return
    }
    if ! ((HAVE_DISCOVER)); then
        # Plumbing only: the filter must really silence h4 (a connect to it gets no answer, not even RST).
        drop_all "$LAB-h4"
        local out
        out=$(timeout 10 ip netns exec "$LAB-h1" python3 "$HELPER" probe "$NET.4" 9 2) || true
        if [[ $out == silent ]]; then
            say "  plumbing: after the BPF drop filter, h1 → h4 gets no answer: ok"
        else
            fail "the drop filter did not silence h4 (h1 → h4 connect: $out)"
        fi
        return 0
    fi
    local n
    for n in 1 2 3 4; do
        start_member "$n" CONCORD_PEER_TIMEOUT=3 -- allreduce -b 1M -e 1M -n 100000 -w 1 -c 0
    done
    # Running: every member printed its ring line (the group is agreed), rank 0 printed the benchmark's
    # header (the communicator is up), and 2 more seconds passed.
    local t0=$SECONDS ready
    while :; do
        ready=0
        for n in 1 2 3 4; do grep -q 'concord: ring:' "$LOGS/3-h$n.log" 2>/dev/null && ready=$((ready + 1)); done
        ((ready == 4)) && grep -q 'concord-bench allreduce' "$LOGS"/3-h?.log && break
        if ((SECONDS - t0 > LAB_DEADLINE)); then
            stop_members
            for n in 1 2 3 4; do show_log "$LOGS/3-h$n.log"; done
            fail "the job did not start within $LAB_DEADLINE s ($ready of 4 printed a ring)"
            return 0
        fi
        for n in 1 2 3 4; do
            if ! kill -0 "${MEMBER_PIDS[n]}" 2>/dev/null; then
                stop_members
                show_log "$LOGS/3-h$n.log" 30
                fail "h$n exited before the job was running"
                return 0
            fi
        done
        sleep 0.5
    done
    sleep 2
    local r lost=""
    for r in 0 1 2 3; do
        [[ $(host_of_rank "$LOGS/3-h1.log" "$r" || true) == 4 ]] && lost=$r
    done
    if [[ -z $lost ]]; then
        stop_members
        show_log "$LOGS/3-h1.log" 30
        fail "cannot tell h4's rank from h1's 'concord: rank R = node … at host:port' lines"
        return 0
    fi
    for n in 1 2 3 4; do
        if ! kill -0 "${MEMBER_PIDS[n]}" 2>/dev/null; then
            stop_members
            show_log "$LOGS/3-h$n.log" 30
            fail "h$n exited before the partition"
            return 0
        fi
    done
    say "  job running; dropping every packet to and from h4 (rank $lost)"
    local cut now
    cut=$(date +%s.%N)
    drop_all "$LAB-h4"
    # Until h1-h3 exited or LAB_PARTITION_LIMIT + 15 s passed, note when each exits and when each first
    # names the lost rank in its output.
    local -A said=() exited=()
    local limit=$((LAB_PARTITION_LIMIT + 15)) left=3
    while ((left > 0)); do
        now=$(date +%s.%N)
        left=0
        for n in 1 2 3; do
            [[ -z ${said[$n]:-} ]] && grep -q -E "lost rank $lost\b" "$LOGS/3-h$n.log" &&
                said[$n]=$(awk -v a="$now" -v b="$cut" 'BEGIN { printf "%.1f", a - b }')
            if [[ -z ${exited[$n]:-} ]]; then
                if kill -0 "${MEMBER_PIDS[n]}" 2>/dev/null; then
                    left=$((left + 1))
                else
                    exited[$n]=$(awk -v a="$now" -v b="$cut" 'BEGIN { printf "%.1f", a - b }')
                    RC[$n]=0
                    wait "${MEMBER_PIDS[n]}" || RC[$n]=$?
                fi
            fi
        done
        awk -v a="$now" -v b="$cut" -v l="$limit" 'BEGIN { exit !(a - b > l) }' && break
        sleep 0.2
    done
    local stuck=()
    for n in 1 2 3; do [[ -z ${exited[$n]:-} ]] && stuck+=("$n"); done
    ((${#stuck[@]} == 0)) || describe_stuck "${stuck[@]}"
    local bad=""
    REASONS=()
    for n in 1 2 3; do
        local what
        if [[ -n ${exited[$n]:-} ]]; then
            what="exit ${RC[$n]} after ${exited[$n]} s"
            [[ ${RC[$n]} == 0 ]] && REASONS+=("h$n exited 0")
            awk -v t="${exited[$n]}" -v l="$LAB_PARTITION_LIMIT" 'BEGIN { exit !(t > l) }' &&
                REASONS+=("h$n took ${exited[$n]} s to exit")
        else
            what="still running $limit s after the cut"
            REASONS+=("h$n did not exit")
        fi
        if [[ -n ${said[$n]:-} ]]; then
            what+=", named rank $lost after ${said[$n]} s"
        else
            REASONS+=("h$n never wrote 'lost rank $lost'")
        fi
        say "  h$n: $what: $(grep -m1 -E 'lost rank|aborted|error' "$LOGS/3-h$n.log" | cut -c1-160 || echo '(no error line)')"
    done
    # The cut was real: h4 does not answer at all (not even with a reset).
    local out
    out=$(timeout 10 ip netns exec "$LAB-h1" python3 "$HELPER" probe "$NET.4" 9 2) || true
    [[ $out == silent ]] || REASONS+=("h4 still answers a TCP connect ($out): the filter did not cut it off")
    stop_members
    if ((${#REASONS[@]} > 0)); then
        for n in 1 2 3; do show_log "$LOGS/3-h$n.log" 10; done
        fail "$(join_reasons)"
    else
        pass "h1-h3 exited non-zero within $LAB_PARTITION_LIMIT s of the cut, each naming rank $lost"
    fi
}

drop_all() { # drop_all NS: every packet leaving or entering eth0 of NS is dropped (classic BPF: return 2)
    # "6 0 0 2" is BPF_RET|BPF_K 2: in direct-action mode that is TC_ACT_SHOT for every packet.
    tc -n "$1" qdisc add dev eth0 clsact
    tc -n "$1" filter add dev eth0 egress bpf da bytecode "1,6 0 0 2"
    tc -n "$1" filter add dev eth0 ingress bpf da bytecode "1,6 0 0 2"
}

for c in $LAB_CASES; do
    case $c in
    1 | 2 | 3) "case$c" ;;
    *) die "unknown case '$c' in LAB_CASES" ;;
    esac
    teardown
done

if ((${#FAILED[@]} > 0)); then
    say "FAILED: case ${FAILED[*]}"
    exit 1
fi
if ((!HAVE_DISCOVER)); then
    skip "concord run has no --discover (plumbing checks passed)"
fi
say "all cases passed"
exit 0
}
