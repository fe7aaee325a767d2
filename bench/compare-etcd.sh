#!/usr/bin/env bash
# Side-by-side benchmark of a three-member etcd and a three-member Ballot on this machine.
#
# Both clusters run on loopback with their data under one temporary directory (same disk, fsync
# on for both), one after the other so they never compete for CPU or disk. The same `ballot bench`
# workloads run against each:
#   put   1 client    on 1 connection     (to the leader)
#   put   1000 clients on 100 connections  (to the leader)
#   range 1000 clients on 100 connections, linearizable  (all members)
#   range 1000 clients on 100 connections, serializable  (all members)
# with 8-byte keys over 100,000 keys and 256-byte values. Then `etcdctl check perf --load=xl`
# runs against each. The results replace the section between the markers in docs/BENCHMARKS.md.
#
# usage: bench/compare-etcd.sh [--only-etcd] [--ballot PATH] [--duration 10s] [--dir DIR]
#                              [--out FILE] [--skip-check-perf] [--keep]
#   --only-etcd        measure etcd only (the Ballot columns say "not run")
#   --ballot PATH      the ballot binary (default: target/release/ballot, built if missing)
#   --duration D       length of each workload (default 10s)
#   --dir DIR          parent of the temporary data directory (default: $TMPDIR or /tmp)
#   --out FILE         markdown file to update (default: docs/BENCHMARKS.md)
#   --skip-check-perf  do not run `etcdctl check perf --load=xl` (it takes a minute per cluster)
#   --keep             keep the data directories and logs
#
# Needs: Debian's etcd-server and etcd-client (3.4), jq. Everything it starts is stopped on exit.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
only_etcd=false
ballot_bin=""
duration=10s
parent_dir=${TMPDIR:-/tmp}
out_file="$repo/docs/BENCHMARKS.md"
check_perf=true
keep=false

while [ $# -gt 0 ]; do
  case $1 in
    --only-etcd) only_etcd=true ;;
    --ballot) ballot_bin=$2; shift ;;
    --duration) duration=$2; shift ;;
    --dir) parent_dir=$2; shift ;;
    --out) out_file=$2; shift ;;
    --skip-check-perf) check_perf=false ;;
    --keep) keep=true ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare-etcd: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

die() { echo "compare-etcd: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }

for tool in etcd etcdctl jq; do
  command -v "$tool" >/dev/null || die "'$tool' is not installed (apt-get install etcd-server etcd-client jq)"
done
export ETCDCTL_API=3

if [ -z "$ballot_bin" ]; then
  ballot_bin="$repo/target/release/ballot"
  if [ ! -x "$ballot_bin" ]; then
    log "building ballot (release)"
    (cd "$repo" && cargo build --release -p ballot --bin ballot) || die "cannot build ballot"
  fi
fi
[ -x "$ballot_bin" ] || die "ballot binary not found: $ballot_bin"
ballot_bin=$(cd "$(dirname "$ballot_bin")" && pwd)/$(basename "$ballot_bin")

work_dir=$(mktemp -d "$parent_dir/compare-etcd.XXXXXX")
started_pids=()

# Stops every process this script started (by pid), then removes the data unless --keep.
cleanup() {
  local pid
  for pid in "${started_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${started_pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  started_pids=()
  if $keep; then
    echo "compare-etcd: data and logs kept in $work_dir" >&2
  else
    rm -rf "$work_dir"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Ports: etcd on 2479x (clients) / 2470x (peers), Ballot on 2579x / 2570x, members 1-3.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
check_ports() {
  local base=$1 i
  for i in 1 2 3; do
    port_free "${base}9$i" || die "port ${base}9$i is in use"
    port_free "${base}0$i" || die "port ${base}0$i is in use"
  done
}

client_endpoints() { echo "127.0.0.1:${1}91,127.0.0.1:${1}92,127.0.0.1:${1}93"; }

# start_cluster KIND BASE: starts three members, prints nothing, fails with the log tail.
start_cluster() {
  local kind=$1 base=$2 i bin cluster="" pids=()
  check_ports "$base"
  for i in 1 2 3; do cluster+="${cluster:+,}m$i=http://127.0.0.1:${base}0$i"; done
  if [ "$kind" = etcd ]; then bin=etcd; else bin=$ballot_bin; fi
  for i in 1 2 3; do
    local args=(--name "m$i" --data-dir "$work_dir/$kind/m$i"
      --listen-client-urls "http://127.0.0.1:${base}9$i" --advertise-client-urls "http://127.0.0.1:${base}9$i"
      --listen-peer-urls "http://127.0.0.1:${base}0$i" --initial-advertise-peer-urls "http://127.0.0.1:${base}0$i"
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token bench
      --log-level error)
    mkdir -p "$work_dir/$kind"
    echo "$bin ${args[*]}" >>"$work_dir/$kind/commands.txt"
    "$bin" "${args[@]}" >"$work_dir/$kind/m$i.log" 2>&1 &
    started_pids+=($!)
    pids+=($!)
  done
  local endpoints
  endpoints=$(client_endpoints "$base")
  for _ in $(seq 150); do
    if etcdctl --endpoints="$endpoints" --command-timeout=2s endpoint health >/dev/null 2>&1; then
      return 0
    fi
    for i in 0 1 2; do
      if ! kill -0 "${pids[$i]}" 2>/dev/null; then
        echo "compare-etcd: $kind member m$((i + 1)) exited; last lines of its log:" >&2
        tail -n 20 "$work_dir/$kind/m$((i + 1)).log" >&2
        return 1
      fi
    done
    sleep 0.2
  done
  echo "compare-etcd: $kind cluster did not become healthy in 30 s" >&2
  return 1
}

stop_cluster() {
  local pid
  for pid in "${started_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${started_pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  started_pids=()
}

# The leader's client endpoint, from `endpoint status` (field 5 of the simple output is
# IS LEADER); all endpoints if that cannot be told.
leader_endpoint() {
  local endpoints=$1 line
  while IFS= read -r line; do
    if [ "$(echo "$line" | awk -F', ' '{print $5}')" = "true" ]; then
      echo "${line%%,*}"
      return
    fi
  done < <(etcdctl --endpoints="$endpoints" endpoint status 2>/dev/null)
  echo "$endpoints"
}

workloads=(put-1 put-1000 range-l range-s)
workload_title() {
  case $1 in
    put-1) echo "put, 1 client, 1 conn" ;;
    put-1000) echo "put, 1000 clients, 100 conns" ;;
    range-l) echo "range linearizable, 1000 clients, 100 conns" ;;
    range-s) echo "range serializable, 1000 clients, 100 conns" ;;
  esac
}
workload_args() {
  local common=(--duration "$duration" --key-size 8 --key-space 100000 --val-size 256 --json)
  case $1 in
    put-1) echo put --clients 1 --conns 1 "${common[@]}" ;;
    put-1000) echo put --clients 1000 --conns 100 "${common[@]}" ;;
    range-l) echo range --consistency l --clients 1000 --conns 100 "${common[@]}" ;;
    range-s) echo range --consistency s --clients 1000 --conns 100 "${common[@]}" ;;
  esac
}

declare -A result       # result[kind/workload] = JSON line from ballot bench
declare -A check_perf_out
declare -A status_note  # status_note[kind] = why a half did not run

# run_side KIND BASE: start, bench every workload, check perf, stop.
run_side() {
  local kind=$1 base=$2 endpoints leader w
  log "$kind: starting three members"
  if ! start_cluster "$kind" "$base"; then
    status_note[$kind]="failed to start"
    stop_cluster
    return 1
  fi
  endpoints=$(client_endpoints "$base")
  leader=$(leader_endpoint "$endpoints")
  for w in "${workloads[@]}"; do
    local target=$endpoints
    case $w in put-*) target=$leader ;; esac
    # shellcheck disable=SC2046  # workload_args prints words on purpose
    local cmd=("$ballot_bin" bench $(workload_args "$w") --endpoints "$target")
    log "$kind: $(workload_title "$w")"
    echo "${cmd[*]}" >>"$work_dir/$kind/commands.txt"
    local json
    if json=$("${cmd[@]}" 2>>"$work_dir/$kind/bench.err"); then
      result[$kind/$w]=$json
    else
      echo "compare-etcd: $kind $(workload_title "$w") failed:" >&2
      tail -n 5 "$work_dir/$kind/bench.err" >&2
    fi
  done
  if $check_perf; then
    log "$kind: etcdctl check perf --load=xl (one minute)"
    check_perf_out[$kind]=$(etcdctl --endpoints="$endpoints" check perf --load=xl 2>&1 | sed 's/\r/\n/g' | grep -v '^ *[0-9]* / [0-9]* ' | grep -v '^$' || true)
  fi
  stop_cluster
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
log "data under $work_dir; load average $load_before"
run_side etcd 247 || die "the etcd half failed; see above"
ballot_ok=true
if $only_etcd; then
  status_note[ballot]="not run (--only-etcd)"
  ballot_ok=false
elif ! run_side ballot 257; then
  ballot_ok=false
fi

# --- the report -----------------------------------------------------------------------------

field() { # field KIND/WORKLOAD JQ-EXPR
  local json=${result[$1]:-}
  [ -n "$json" ] && echo "$json" | jq -r "$2" || echo ""
}
fmt_ms() { [ -n "$1" ] && awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }' || echo "—"; }
fmt_ops() { [ -n "$1" ] && awk -v x="$1" 'BEGIN { printf "%.0f", x }' || echo "—"; }
ratio() { # ratio NUMERATOR DENOMINATOR
  if [ -n "$1" ] && [ -n "$2" ]; then awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "—" }'; else echo "—"; fi
}

table() {
  echo "| workload | etcd ops/s | Ballot ops/s | ratio | etcd p50 ms | Ballot p50 ms | etcd p99 ms | Ballot p99 ms | p99 ratio |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  local w
  for w in "${workloads[@]}"; do
    local et bt ep50 bp50 ep99 bp99
    et=$(field "etcd/$w" .throughput_ops_per_sec); bt=$(field "ballot/$w" .throughput_ops_per_sec)
    ep50=$(field "etcd/$w" .latency_us.p50); bp50=$(field "ballot/$w" .latency_us.p50)
    ep99=$(field "etcd/$w" .latency_us.p99); bp99=$(field "ballot/$w" .latency_us.p99)
    echo "| $(workload_title "$w") | $(fmt_ops "$et") | $(fmt_ops "$bt") | $(ratio "$bt" "$et") | $(fmt_ms "$ep50") | $(fmt_ms "$bp50") | $(fmt_ms "$ep99") | $(fmt_ms "$bp99") | $(ratio "$bp99" "$ep99") |"
  done
}

section() {
  local disk_line
  disk_line=$(df -T "$work_dir" | awk 'NR == 2 { print $1 " (" $2 ")" }')
  echo "<!-- compare-etcd:begin (generated by bench/compare-etcd.sh; rerun it to replace) -->"
  echo "## Ballot vs etcd, three members each"
  echo
  echo "Run on $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p' | head -1));"
  echo "data on $disk_line; $(etcd --version | head -1); ballot $("$ballot_bin" --version | awk '{print $2}') ($(cd "$repo" && git rev-parse --short HEAD 2>/dev/null || echo unknown))."
  echo "Each workload ran for $duration; 8-byte keys over 100,000 keys, 256-byte values; fsync on"
  echo "for both. Ratio = Ballot / etcd (higher throughput and lower p99 ratio are better)."
  echo "Load average (1, 5, 15 min) before the run: $load_before; after: $(cut -d' ' -f1-3 /proc/loadavg)."
  [ -n "${status_note[ballot]:-}" ] && { echo; echo "**Ballot: ${status_note[ballot]}.**"; }
  echo
  table
  if $check_perf; then
    local kind
    for kind in etcd ballot; do
      echo
      echo "\`etcdctl check perf --load=xl\` against $kind:"
      echo
      echo '```'
      echo "${check_perf_out[$kind]:-not run}"
      echo '```'
    done
  fi
  echo
  echo "Commands (members, then bench runs; \`--endpoints\` of put runs is the leader):"
  echo
  echo '```'
  local kind
  for kind in etcd ballot; do
    [ -f "$work_dir/$kind/commands.txt" ] && sed "s|$work_dir|\$DIR|g; s|$repo/||g" "$work_dir/$kind/commands.txt"
  done
  echo '```'
  echo "<!-- compare-etcd:end -->"
}

mkdir -p "$(dirname "$out_file")"
new_section=$(section)
if [ -f "$out_file" ] && grep -q '<!-- compare-etcd:begin' "$out_file"; then
  awk -v replacement="$new_section" '
    /<!-- compare-etcd:begin/ { print replacement; skipping = 1; next }
    /<!-- compare-etcd:end -->/ { skipping = 0; next }
    !skipping { print }
  ' "$out_file" >"$out_file.tmp" && mv "$out_file.tmp" "$out_file"
else
  { [ -f "$out_file" ] && { cat "$out_file"; echo; } || printf '# Benchmarks\n\n'; echo "$new_section"; } >"$out_file.tmp"
  mv "$out_file.tmp" "$out_file"
fi
echo "$new_section" | sed -n '/^| workload/,/^$/p'
log "table written to $out_file"
$ballot_ok || { echo "compare-etcd: the Ballot half did not complete: ${status_note[ballot]:-see above}" >&2; exit 1; }
