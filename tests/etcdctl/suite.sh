#!/usr/bin/env bash
# etcdctl compatibility suite: drives a live three-member cluster with etcdctl (ETCDCTL_API=3,
# Debian's etcd-client 3.4) and asserts what etcdctl prints. It was validated against a reference
# etcd 3.4 cluster; Ballot must pass it unchanged.
#
# usage: tests/etcdctl/suite.sh ENDPOINTS [--skip-slow]
#   ENDPOINTS    comma-separated client endpoints of all members (host:port)
#   --skip-slow  skip `check perf --load=s` (60 s)
#
# With SUITE_MEMBER_BIN set to the server's executable (etcd or ballot: both take etcd's member
# flags), it also adds a real learner, starts it with that executable, promotes it once it has
# caught up, reads through it and removes it again.
#
# Keys live under a fresh prefix per run, so the suite can run repeatedly against one cluster.
# It compacts the cluster, moves its leader, adds and removes a learner; member IDs, revisions
# and times are asserted by shape and by their relations, never as literals.
# Needs: etcdctl, base64, timeout (coreutils). Prints "N passed, N failed" last; exits 1 on a failure.
set -uo pipefail

if [ $# -lt 1 ] || [ -z "$1" ]; then
  echo "usage: $0 ENDPOINTS [--skip-slow]" >&2
  exit 2
fi
ENDPOINTS=$1
skip_slow=false
[ "${2:-}" = "--skip-slow" ] && skip_slow=true
export ETCDCTL_API=3
command -v etcdctl >/dev/null || { echo "etcdctl is not installed (apt-get install etcd-client)" >&2; exit 2; }

IFS=, read -r -a endpoint_list <<<"$ENDPOINTS"
first_endpoint=${endpoint_list[0]}
P="/suite-$(date +%s)-$$"
work=$(mktemp -d)
background_pids=()
passed=0
failed=0

cleanup() {
  local pid
  for pid in "${background_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${background_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# --- helpers -------------------------------------------------------------------------------

ctl() { etcdctl --endpoints="$ENDPOINTS" --command-timeout=15s "$@"; }
# For background processes: `ctl` would fork a subshell and leave $! naming it instead of etcdctl.
bg_ctl=(etcdctl --endpoints="$ENDPOINTS")

# run CMD...: runs a command and keeps its stdout in OUT, its stderr without the client
# library's JSON log lines in ERR, the raw stderr in RAWERR and the exit code in RC.
run() {
  OUT=$("$@" 2>"$work/stderr")
  RC=$?
  RAWERR=$(cat "$work/stderr")
  ERR=$(grep -v '^{"level"' "$work/stderr")
}

# run_merged CMD...: like run, with stderr (less the client's JSON log lines) in OUT too.
run_merged() {
  "$@" >"$work/merged" 2>&1
  RC=$?
  OUT=$(grep -v '^{"level"' "$work/merged")
  ERR=""
  RAWERR=""
}

pass() { passed=$((passed + 1)); echo "ok - $1"; }
fail() {
  failed=$((failed + 1))
  echo "FAIL - $1"
  shift
  local line
  for line in "$@"; do printf '    %s\n' "$line"; done
}

# expect_out NAME EXPECTED: the last run succeeded and printed exactly EXPECTED.
expect_out() {
  if [ "$RC" -eq 0 ] && [ "$OUT" = "$2" ]; then
    pass "$1"
  else
    fail "$1" "exit code: $RC" "expected stdout:" "$2" "got stdout:" "$OUT" "stderr: $ERR"
  fi
}

# expect_match NAME REGEX: the last run succeeded and its whole stdout matches the extended
# regex (newlines included: the regex is anchored with ^ and $ by this function).
expect_match() {
  if [ "$RC" -eq 0 ] && [[ $OUT =~ ^$2$ ]]; then
    pass "$1"
  else
    fail "$1" "exit code: $RC" "expected stdout to match:" "$2" "got stdout:" "$OUT" "stderr: $ERR"
  fi
}

# expect_error NAME MESSAGE [GRPC-CODE]: the last run failed and etcdctl printed "Error: MESSAGE";
# with GRPC-CODE, the client library also logged that gRPC status code for it.
expect_error() {
  local ok=true
  [ "$RC" -ne 0 ] || ok=false
  grep -qxF "Error: $2" <<<"$ERR" || ok=false
  if [ -n "${3:-}" ] && ! grep -qF "code = $3 desc = $2" <<<"$RAWERR"; then ok=false; fi
  if $ok; then
    pass "$1"
  else
    fail "$1" "exit code: $RC" "expected error: Error: $2${3:+ (gRPC code $3)}" "got stderr:" "$RAWERR" "stdout: $OUT"
  fi
}

# check NAME CONDITION-DESCRIPTION TEST...: a plain assertion.
check() {
  local name=$1 what=$2
  shift 2
  if "$@"; then pass "$name"; else fail "$name" "expected: $what"; fi
}

# lines A B ...: the arguments as lines (command substitution drops the final newline, as it
# does from the captured output).
lines() { printf '%s\n' "$@"; }

# The store's current revision, from the header of a read.
current_revision() {
  ctl get "$P/revision-probe" -w json | grep -o '"revision":[0-9]*' | head -1 | cut -d: -f2
}

# wait_for_lines FILE COUNT: waits (bounded, 15 s) until FILE holds at least COUNT lines.
wait_for_lines() {
  local deadline=$((SECONDS + 15))
  # The file may not exist yet: the background process opens it after the fork.
  while [ "$(cat "$1" 2>/dev/null | wc -l)" -lt "$2" ]; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.05
  done
}

# wait_for_key_count PREFIX COUNT: waits (bounded, 15 s) until COUNT keys exist under PREFIX.
wait_for_key_count() {
  local deadline=$((SECONDS + 15))
  until [ "$(ctl get --prefix "$1" --keys-only | grep -c .)" -ge "$2" ]; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.05
  done
}

# wait_for_text FILE TEXT: waits (bounded, 15 s) until FILE contains TEXT as a whole line.
wait_for_text() {
  local deadline=$((SECONDS + 15))
  until grep -qxF "$2" "$1" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.05
  done
}

# The base64 of a string, escaped for use in a regex ('+' is a regex operator).
b64() { printf '%s' "$1" | base64 -w0 | sed 's/+/\\+/g'; }

# Field N (1-based) of the `endpoint status` line of each member, in endpoint order.
status_field() { ctl endpoint status | awk -F', ' -v n="$1" '{print $n}'; }

lease_list_consistent() {
  [ "$(sed -n '1s/^found \([0-9]*\) leases$/\1/p' <<<"$OUT")" = "$(($(wc -l <<<"$OUT") - 1))" ]
}
timed_out_silently() { [ "$RC" -eq 124 ] && [ -z "$OUT" ]; }
lacks_line_starting() { ! grep -q "^$1" <<<"$OUT"; }
process_gone() { ! kill -0 "$1" 2>/dev/null; }

HEX='[0-9a-f]+'
NUM='[0-9]+'
GO_DURATION='[0-9.]+(ns|µs|us|ms|s|m[0-9.]+s)'

# --- put / get -----------------------------------------------------------------------------

test_put_get() {
  run ctl put "$P/a" 1
  expect_out "put prints OK" "OK"
  local rev_a1
  rev_a1=$(current_revision)
  ctl put "$P/b" 2 >/dev/null
  ctl put "$P/c" 3 >/dev/null
  ctl put "$P/d" 4 >/dev/null
  run ctl put --prev-kv "$P/a" 10
  expect_out "put --prev-kv prints the previous pair" "$(lines OK "$P/a" 1)"
  local rev_a10=$((rev_a1 + 4))

  run ctl get "$P/a"
  expect_out "get prints key and value" "$(lines "$P/a" 10)"
  run ctl get "$P/missing"
  expect_out "get of a missing key prints nothing" ""
  run ctl get --prefix "$P/"
  expect_out "get --prefix" "$(lines "$P/a" 10 "$P/b" 2 "$P/c" 3 "$P/d" 4)"
  run ctl get "$P/b" "$P/d"
  expect_out "get with a range end excludes the end" "$(lines "$P/b" 2 "$P/c" 3)"
  run ctl get --from-key "$P/c" --limit 2
  expect_out "get --from-key" "$(lines "$P/c" 3 "$P/d" 4)"
  run ctl get --prefix "$P/" --limit 2
  expect_out "get --limit" "$(lines "$P/a" 10 "$P/b" 2)"
  run ctl get "$P/a" --rev="$rev_a1"
  expect_out "get --rev reads the older value" "$(lines "$P/a" 1)"
  run ctl get "$P/d" --rev="$rev_a1"
  expect_out "get --rev before a key's creation prints nothing" ""
  run ctl get --prefix "$P/" --keys-only
  expect_out "get --keys-only" "$(lines "$P/a" "" "$P/b" "" "$P/c" "" "$P/d" "")"
  run ctl get --prefix "$P/" --print-value-only
  expect_out "get --print-value-only" "$(lines 10 2 3 4)"
  run ctl get --prefix "$P/" --sort-by=VALUE --order=DESCEND
  expect_out "get --sort-by=VALUE --order=DESCEND" "$(lines "$P/d" 4 "$P/c" 3 "$P/b" 2 "$P/a" 10)"
  run ctl get --prefix "$P/" --sort-by=MODIFY --order=DESCEND --keys-only --limit 2
  expect_out "get --sort-by=MODIFY --order=DESCEND --limit" "$(lines "$P/a" "" "$P/d" "")"
  run ctl get --prefix "$P/" --sort-by=VERSION --order=DESCEND --print-value-only --limit 1
  expect_out "get --sort-by=VERSION" "10"
  run ctl get --prefix "$P/" --sort-by=CREATE --order=ASCEND --print-value-only
  expect_out "get --sort-by=CREATE" "$(lines 10 2 3 4)"
  run ctl get --prefix "$P/" --order=DESCEND --print-value-only
  expect_out "get --order=DESCEND sorts by key" "$(lines 4 3 2 10)"
  run ctl get --consistency=s "$P/b"
  expect_out "get --consistency=s" "$(lines "$P/b" 2)"

  run ctl get "$P/a" -w json
  expect_match "get -w json has header and kv fields" \
    "\{\"header\":\{\"cluster_id\":$NUM,\"member_id\":$NUM,\"revision\":$NUM,\"raft_term\":$NUM\},\"kvs\":\[\{\"key\":\"$(b64 "$P/a")\",\"create_revision\":$rev_a1,\"mod_revision\":$rev_a10,\"version\":2,\"value\":\"$(b64 10)\"\}\],\"count\":1\}"
  run ctl get --prefix "$P/" --limit 1 -w json
  expect_match "get -w json reports more and the full count" \
    "\{\"header\":\{[^}]*\},\"kvs\":\[\{\"key\":\"$(b64 "$P/a")\"[^]]*\}\],\"more\":true,\"count\":4\}"
  run ctl get "$P/missing" -w json
  expect_match "get -w json of a missing key has only the header" "\{\"header\":\{[^}]*\}\}"

  run ctl put "$P/empty" ""
  expect_out "put of an empty value" "OK"
  run ctl get "$P/empty"
  expect_out "get of an empty value" "$(lines "$P/empty" "")"

  run ctl get "$P/a" --rev=$((rev_a10 + 1000000))
  expect_error "get --rev in the future" "etcdserver: mvcc: required revision is a future revision" OutOfRange
  run ctl get ""
  expect_error "get of an empty key" "etcdserver: key is not provided" InvalidArgument
}

# --- del -----------------------------------------------------------------------------------

test_del() {
  local d="$P/del"
  ctl put "$d/a" 1 >/dev/null
  ctl put "$d/b" 2 >/dev/null
  ctl put "$d/c" 3 >/dev/null
  ctl put "$d/d" 4 >/dev/null
  run ctl del "$d/a"
  expect_out "del prints the number deleted" "1"
  run ctl del "$d/a"
  expect_out "del of a missing key prints 0" "0"
  run ctl del --prev-kv "$d/b"
  expect_out "del --prev-kv prints the deleted pairs" "$(lines 1 "$d/b" 2)"
  ctl put "$d/e" 5 >/dev/null
  run ctl del "$d/c" "$d/e"
  expect_out "del with a range end" "2"
  run ctl del --prefix "$d/"
  expect_out "del --prefix" "1"
  run ctl get --prefix "$d/"
  expect_out "nothing left after del --prefix" ""
}

# --- txn -----------------------------------------------------------------------------------

test_txn() {
  local t="$P/txn"
  ctl put "$t/k" v1 >/dev/null
  run ctl txn -i <<EOF
value("$t/k") = "v1"
mod("$t/k") > "0"

put $t/k v2
get $t/k

put $t/failed yes

EOF
  expect_out "txn -i success branch" \
    "$(lines "compares:" "success requests (get, put, del):" "failure requests (get, put, del):" SUCCESS "" OK "" "$t/k" v2)"
  run ctl txn -i <<EOF
value("$t/k") = "v1"

put $t/k v3

put $t/failed yes
del $t/k

EOF
  expect_out "txn -i failure branch" \
    "$(lines "compares:" "success requests (get, put, del):" "failure requests (get, put, del):" FAILURE "" OK "" 1)"
  run ctl get --prefix "$t/"
  expect_out "txn failure branch took effect" "$(lines "$t/failed" yes)"
  run ctl txn -i <<EOF
version("$t/k") = "0"
create("$t/failed") > "0"

put $t/k new
del $t/failed

get $t/k

EOF
  expect_out "txn -i on a missing key's version" \
    "$(lines "compares:" "success requests (get, put, del):" "failure requests (get, put, del):" SUCCESS "" OK "" 1)"
  run ctl txn -i -w json <<EOF
value("$t/k") = "nope"


get $t/k

EOF
  expect_match "txn -w json of a failed txn" \
    "compares:
success requests \(get, put, del\):
failure requests \(get, put, del\):
\{\"header\":\{[^}]*\},\"responses\":\[\{\"Response\":\{\"ResponseRange\":\{\"header\":\{\"revision\":$NUM\},\"kvs\":\[\{\"key\":\"$(b64 "$t/k")\",[^]]*\"value\":\"$(b64 new)\"\}\],\"count\":1\}\}\}\]\}"
}

# --- watch ---------------------------------------------------------------------------------

test_watch() {
  local w="$P/watch" start
  start=$(($(current_revision) + 1))
  "${bg_ctl[@]}" watch --prefix "$w/" --rev="$start" >"$work/watch-live.out" 2>"$work/watch-live.err" &
  local live=$!
  background_pids+=("$live")
  ctl put "$w/a" 1 >/dev/null
  ctl put "$w/b" 2 >/dev/null
  ctl put "$P/not-watched" x >/dev/null
  ctl del "$w/a" >/dev/null
  ctl put "$w/b" 3 >/dev/null
  local expected
  expected=$(lines PUT "$w/a" 1 PUT "$w/b" 2 DELETE "$w/a" "" PUT "$w/b" 3)
  wait_for_lines "$work/watch-live.out" 12
  kill "$live" 2>/dev/null
  wait "$live" 2>/dev/null
  OUT=$(cat "$work/watch-live.out") RC=0 ERR=$(cat "$work/watch-live.err")
  expect_out "watch --prefix --rev sees later events in order" "$expected"

  run timeout 3 etcdctl --endpoints="$ENDPOINTS" watch --prefix "$w/" --rev="$start"
  RC=$([ "$RC" -eq 124 ] && echo 0 || echo "$RC")
  expect_out "watch --rev replays history" "$expected"

  run timeout 3 etcdctl --endpoints="$ENDPOINTS" watch "$w/b" --rev="$start" --prev-kv
  RC=$([ "$RC" -eq 124 ] && echo 0 || echo "$RC")
  expect_out "watch --prev-kv shows the previous value" "$(lines PUT "$w/b" 2 PUT "$w/b" 2 "$w/b" 3)"

  run timeout 3 etcdctl --endpoints="$ENDPOINTS" watch "$w/a" "$w/b" --rev="$start" -w json
  RC=$([ "$RC" -eq 124 ] && echo 0 || echo "$RC")
  expect_match "watch -w json over a range" \
    "(\{\"Header\":\{[^}]*\},\"Events\":\[[^]]*\],\"CompactRevision\":0,\"Canceled\":false,\"Created\":false\}
?)+"
  check "watch -w json carries a DELETE (type 1) with only key and mod_revision" "a delete event of $w/a" \
    grep -qF "{\"type\":1,\"kv\":{\"key\":\"$(b64 "$w/a")\",\"mod_revision\":$((start + 3))}}" <<<"$OUT"
}

# --- compaction (after every test that reads old revisions) ---------------------------------

test_compaction() {
  local c="$P/compact" rev
  ctl put "$c/k" 1 >/dev/null
  rev=$(current_revision)
  ctl put "$c/k" 2 >/dev/null
  run ctl compaction "$rev"
  expect_out "compaction prints the revision" "compacted revision $rev"
  run ctl get "$c/k" --rev=$((rev - 1))
  expect_error "get below the compact revision" "etcdserver: mvcc: required revision has been compacted" OutOfRange
  run ctl get "$c/k" --rev="$rev"
  expect_out "get at the compact revision still works" "$(lines "$c/k" 1)"
  run ctl compaction "$rev"
  expect_error "compaction at the same revision again" "etcdserver: mvcc: required revision has been compacted" OutOfRange
  run ctl compaction $((rev + 1000000))
  expect_error "compaction in the future" "etcdserver: mvcc: required revision is a future revision" OutOfRange
  run ctl compaction --physical $((rev + 1))
  expect_out "compaction --physical" "compacted revision $((rev + 1))"
  run timeout 3 etcdctl --endpoints="$ENDPOINTS" watch "$c/k" --rev=$((rev - 1))
  check "watch from a compacted revision is canceled" "etcdctl reports the compaction" \
    grep -qF "watch was canceled (etcdserver: mvcc: required revision has been compacted)" <<<"$OUT$ERR"
}

# --- lease ---------------------------------------------------------------------------------

test_lease() {
  local l="$P/lease" id
  run ctl lease grant 100
  expect_match "lease grant" "lease $HEX granted with TTL\(100s\)"
  id=$(awk '{print $2}' <<<"$OUT")
  run ctl lease grant 1
  expect_match "lease grant raises a short TTL to the minimum" "lease $HEX granted with TTL\(2s\)"
  run ctl lease grant 99999999999
  expect_error "lease grant with a too large TTL" "failed to grant lease (etcdserver: too large lease TTL)"

  run ctl put --lease="$id" "$l/k" v
  expect_out "put --lease" "OK"
  run ctl lease timetolive "$id"
  expect_match "lease timetolive" "lease $id granted with TTL\(100s\), remaining\((100|99|98|97|96|95)s\)"
  run ctl lease timetolive --keys "$id"
  expect_match "lease timetolive --keys" \
    "lease $id granted with TTL\(100s\), remaining\($NUM+s\), attached keys\(\[$l/k\]\)"
  run ctl lease timetolive "$id" -w json
  expect_match "lease timetolive -w json" \
    "\{\"cluster_id\":$NUM,\"member_id\":$NUM,\"revision\":$NUM,\"raft_term\":$NUM,\"id\":$((16#$id)),\"ttl\":$NUM,\"granted-ttl\":100,\"keys\":null\}"
  run ctl lease list
  expect_match "lease list" "found $NUM leases(
$HEX)+"
  check "lease list counts the leases it lists" "'found N leases' then N IDs" lease_list_consistent
  check "lease list includes the granted lease" "a line $id" grep -qxF "$id" <<<"$OUT"
  run ctl lease keep-alive --once "$id"
  expect_out "lease keep-alive --once" "lease $id keepalived with TTL(100)"
  run ctl lease revoke "$id"
  expect_out "lease revoke" "lease $id revoked"
  run ctl get "$l/k"
  expect_out "revoking a lease deletes its keys" ""
  run ctl lease revoke "$id"
  expect_error "lease revoke of an unknown lease" "failed to revoke lease (etcdserver: requested lease not found)"
  run ctl lease timetolive "$id"
  expect_out "lease timetolive of a revoked lease" "lease $id already expired"
  run ctl lease keep-alive --once "$id"
  expect_error "lease keep-alive of a revoked lease" "etcdserver: requested lease not found"
  run ctl put --lease=123abc "$l/k2" v
  expect_error "put with an unknown lease" "etcdserver: requested lease not found" NotFound
}

# --- member --------------------------------------------------------------------------------

test_member() {
  local member_line="$HEX, started, [^,]+, http://[^,]+, http://[^,]+, false"
  run ctl member list
  expect_match "member list shows ${#endpoint_list[@]} started voters" \
    "$member_line(
$member_line){$((${#endpoint_list[@]} - 1))}"
  local ids sorted
  ids=$(awk -F', ' '{print $1}' <<<"$OUT")
  # Member IDs are unsigned 64-bit: compare them as zero-padded hex, not as shell integers.
  sorted=$(while read -r id; do printf '%s %s\n' "$(printf '%16s' "$id" | tr ' ' 0)" "$id"; done <<<"$ids" | sort | awk '{print $2}')
  check "member list is ordered by member ID" "IDs in ascending order" [ "$ids" = "$sorted" ]
  local status_ids
  status_ids=$(status_field 2 | sort)
  check "member list and endpoint status agree on IDs" "the same IDs" [ "$(sort <<<"$ids")" = "$status_ids" ]

  local fake_peer="http://127.0.0.1:1"
  run ctl member add suite-learner --peer-urls="$fake_peer" --learner
  expect_match "member add --learner" \
    "Member +($HEX) added to cluster +($HEX)

ETCD_NAME=\"suite-learner\"
ETCD_INITIAL_CLUSTER=\"([^=,\"]+=http://[^,\"]+,)*suite-learner=$fake_peer(,[^=,\"]+=http://[^,\"]+)*\"
ETCD_INITIAL_ADVERTISE_PEER_URLS=\"$fake_peer\"
ETCD_INITIAL_CLUSTER_STATE=\"existing\""
  local learner cluster
  # etcdctl prints both IDs with %16x: an ID with fewer than 16 hex digits is space-padded.
  learner=$(sed -n '1s/^Member  *\([0-9a-f]*\) added.*/\1/p' <<<"$OUT")
  cluster=$(sed -n '1s/.* added to cluster  *\([0-9a-f]*\)$/\1/p' <<<"$OUT")
  check "member add lists every member in ETCD_INITIAL_CLUSTER" "$((${#endpoint_list[@]} + 1)) entries" \
    [ "$(grep '^ETCD_INITIAL_CLUSTER=' <<<"$OUT" | tr ',' '\n' | wc -l)" -eq $((${#endpoint_list[@]} + 1)) ]
  run ctl member list
  check "member list shows the learner as unstarted" "$learner, unstarted, , $fake_peer, , true" \
    grep -qxF "$learner, unstarted, , $fake_peer, , true" <<<"$OUT"
  run ctl member promote "$learner"
  expect_error "member promote of a learner that is not in sync" \
    "etcdserver: can only promote a learner member which is in sync with leader"
  run ctl member promote "$(head -1 <<<"$ids")"
  expect_error "member promote of a voter" "etcdserver: can only promote a learner member"
  local voter_peer
  voter_peer=$(ctl member list | awk -F', ' 'NR == 1 {print $4}')
  run ctl member add suite-dup --peer-urls="$voter_peer"
  expect_error "member add with a peer URL in use" "etcdserver: Peer URLs already exists"
  run ctl member remove "$learner"
  expect_out "member remove" "$(printf 'Member %16s removed from cluster %16s' "$learner" "$cluster")"
  run ctl member remove "$learner"
  expect_error "member remove of an unknown member" "etcdserver: member not found"
  run ctl member list
  check "the learner is gone" "no line for $learner" lacks_line_starting "$learner, "
}

# free_port: a loopback port nothing listens on (picked at random; checked by connecting).
# A port nothing listens on, below Linux's ephemeral range (32768 and up by default): a port in
# that range can be the local end of some client connection, which no probe detects and which
# makes the joiner's bind fail.
free_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % 12000))
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
  done
}

# A learner that really joins: added, started with SUITE_MEMBER_BIN, promoted once in sync (which
# may take a moment: promotion is refused until the learner has caught up), then removed.
# two_free_ports: sets peer_port and client_port to two different free ports.
two_free_ports() {
  peer_port=$(free_port)
  client_port=$(free_port)
  while [ "$client_port" = "$peer_port" ]; do client_port=$(free_port); done
}

test_member_join() {
  local peer_port client_port
  two_free_ports
  local peer="http://127.0.0.1:$peer_port" client="http://127.0.0.1:$client_port"
  ctl put "$P/before-join" v1 >/dev/null
  run ctl member add suite-joiner --peer-urls="$peer" --learner
  local joiner cluster initial_cluster
  joiner=$(sed -n '1s/^Member  *\([0-9a-f]*\) added.*/\1/p' <<<"$OUT")
  cluster=$(sed -n '1s/.* added to cluster  *\([0-9a-f]*\)$/\1/p' <<<"$OUT")
  initial_cluster=$(sed -n 's/^ETCD_INITIAL_CLUSTER="\(.*\)"$/\1/p' <<<"$OUT")
  check "member add of a learner to start" "member and cluster IDs and ETCD_INITIAL_CLUSTER" \
    test "$RC" -eq 0 -a -n "$joiner" -a -n "$cluster" -a -n "$initial_cluster"
  # 4 MiB WAL segments for ballot (etcd ignores the variable), as the cluster under test uses.
  BALLOT_WAL_SEGMENT_BYTES=4194304 "$SUITE_MEMBER_BIN" --name suite-joiner \
    --data-dir "$work/joiner" --initial-cluster "$initial_cluster" \
    --initial-cluster-state existing --initial-advertise-peer-urls "$peer" \
    --listen-peer-urls "$peer" --listen-client-urls "$client" --advertise-client-urls "$client" \
    >"$work/joiner.log" 2>&1 &
  local joiner_pid=$!
  background_pids+=("$joiner_pid")

  local deadline=$((SECONDS + 30))
  while :; do
    run ctl member promote "$joiner"
    [ "$RC" -ne 0 ] && [ $SECONDS -lt $deadline ] && kill -0 "$joiner_pid" 2>/dev/null || break
    sleep 0.2
  done
  expect_out "member promote of a learner in sync" \
    "$(printf 'Member %16s promoted in cluster %16s' "$joiner" "$cluster")"
  if [ "$RC" -ne 0 ]; then
    kill -0 "$joiner_pid" 2>/dev/null && echo "    (the joiner is running)" || echo "    (the joiner has exited)"
    echo "    last lines of the joiner's log:"
    tail -n 20 "$work/joiner.log" | sed 's/^/      /'
  fi
  # The name and client URLs appear once the new member has published them.
  local line="$joiner, started, suite-joiner, $peer, $client, false"
  deadline=$((SECONDS + 15))
  until run ctl member list; grep -qxF "$line" <<<"$OUT" || [ $SECONDS -ge $deadline ]; do
    sleep 0.1
  done
  check "member list shows the promoted member as a started voter" "$line" \
    grep -qxF "$line" <<<"$OUT"
  run etcdctl --endpoints="127.0.0.1:$client_port" --command-timeout=15s get "$P/before-join" --print-value-only
  expect_out "the promoted member serves what was written before it joined" "v1"
  run etcdctl --endpoints="127.0.0.1:$client_port" --command-timeout=15s put "$P/through-joiner" v2
  expect_out "the promoted member takes writes" "OK"

  run ctl member remove "$joiner"
  expect_out "member remove of the promoted member" \
    "$(printf 'Member %16s removed from cluster %16s' "$joiner" "$cluster")"
  deadline=$((SECONDS + 30))
  while kill -0 "$joiner_pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  check "the removed member stops by itself" "process $joiner_pid exited" \
    process_gone "$joiner_pid"
  run ctl member list
  check "member list is back to ${#endpoint_list[@]} members" "${#endpoint_list[@]} lines" \
    [ "$(grep -c . <<<"$OUT")" -eq "${#endpoint_list[@]}" ]
  run ctl get "$P/through-joiner" --print-value-only
  expect_out "the write through the removed member is kept" "v2"
}

# --- endpoint ------------------------------------------------------------------------------

test_endpoint() {
  local count=${#endpoint_list[@]} ep
  # etcdctl 3.4 prints health results on stderr.
  run_merged ctl endpoint health
  local health_line="[^ ]+ is healthy: successfully committed proposal: took = $GO_DURATION"
  expect_match "endpoint health" "$health_line(
$health_line){$((count - 1))}"
  for ep in "${endpoint_list[@]}"; do
    check "endpoint health reports $ep" "a line for $ep" grep -q "^$ep is healthy: " <<<"$OUT"
  done
  run_merged ctl endpoint health --cluster
  expect_match "endpoint health --cluster uses the advertised client URLs" \
    "http://$health_line(
http://$health_line){$((count - 1))}"

  local status_line="[^ ]+, $HEX, [0-9]+\.[0-9]+\.[0-9]+, [0-9.]+ (B|kB|MB|GB), (true|false), false, $NUM, $NUM, $NUM, "
  run ctl endpoint status
  expect_match "endpoint status" "$status_line(
$status_line){$((count - 1))}"
  check "endpoint status shows exactly one leader" "one 'true' in the leader column" \
    [ "$(awk -F', ' '$5 == "true"' <<<"$OUT" | wc -l)" -eq 1 ]
  check "endpoint status members share one raft term" "equal terms" \
    [ "$(awk -F', ' '{print $7}' <<<"$OUT" | sort -u | wc -l)" -eq 1 ]
  run ctl endpoint status --cluster
  expect_match "endpoint status --cluster" "http://$status_line(
http://$status_line){$((count - 1))}"
  run ctl endpoint status -w json
  expect_match "endpoint status -w json" \
    "\[\{\"Endpoint\":\"[^\"]+\",\"Status\":\{\"header\":\{\"cluster_id\":$NUM,\"member_id\":$NUM,\"revision\":$NUM,\"raft_term\":$NUM\},\"version\":\"[^\"]+\",\"dbSize\":$NUM,\"leader\":$NUM,\"raftIndex\":$NUM,\"raftTerm\":$NUM,\"raftAppliedIndex\":$NUM,\"dbSizeInUse\":$NUM\}\}(,\{.*\})*\]"
}

# --- alarm and defrag ----------------------------------------------------------------------

test_maintenance() {
  local ep
  run ctl alarm list
  expect_out "alarm list with no alarm" ""
  run ctl alarm disarm
  expect_out "alarm disarm with no alarm" ""
  run ctl defrag
  expect_match "defrag every endpoint" "(Finished defragmenting etcd member\[[^]]+\]
?){${#endpoint_list[@]}}"
  for ep in "${endpoint_list[@]}"; do
    check "defrag reports $ep" "a line for $ep" grep -qxF "Finished defragmenting etcd member[$ep]" <<<"$OUT"
  done
  run ctl get "$P/compact/k" --print-value-only
  expect_out "data is intact after defrag" "2"
}

# A single member of its own with a small --quota-backend-bytes, started with SUITE_MEMBER_BIN:
# puts of 100 kB values until one is refused, then the NOSPACE alarm as etcdctl prints it in
# alarm list, endpoint status and alarm disarm.
test_quota_alarm() {
  local peer_port client_port
  two_free_ports
  local peer="http://127.0.0.1:$peer_port" client="http://127.0.0.1:$client_port"
  BALLOT_WAL_SEGMENT_BYTES=4194304 "$SUITE_MEMBER_BIN" --name suite-quota \
    --data-dir "$work/quota" --initial-cluster "suite-quota=$peer" --initial-cluster-token suite-quota \
    --initial-advertise-peer-urls "$peer" --listen-peer-urls "$peer" \
    --listen-client-urls "$client" --advertise-client-urls "$client" \
    --quota-backend-bytes 300000 >"$work/quota.log" 2>&1 &
  local quota_pid=$!
  background_pids+=("$quota_pid")
  local q=(etcdctl --endpoints="127.0.0.1:$client_port" --command-timeout=15s)
  local deadline=$((SECONDS + 30))
  until "${q[@]}" endpoint health >/dev/null 2>&1 || [ $SECONDS -ge $deadline ]; do sleep 0.1; done
  local value puts=0
  value=$(head -c 100000 /dev/zero | tr '\0' x)
  while [ $puts -lt 20 ]; do
    run "${q[@]}" put "$P/quota/$puts" "$value"
    [ "$RC" -ne 0 ] && break
    puts=$((puts + 1))
  done
  expect_error "a put past the quota" "etcdserver: mvcc: database space exceeded"
  local id
  id=$("${q[@]}" endpoint status -w json | sed -n 's/.*"member_id":\([0-9]*\).*/\1/p')
  local line="memberID:$id alarm:NOSPACE "
  run "${q[@]}" alarm list
  expect_out "alarm list shows the quota's NOSPACE" "$line"
  run "${q[@]}" endpoint status
  expect_match "endpoint status lists the alarm in its errors" ".*, $line"
  run "${q[@]}" put "$P/quota/small" 1
  expect_error "a small put is refused while the alarm is up" "etcdserver: mvcc: database space exceeded"
  run "${q[@]}" alarm disarm
  expect_out "alarm disarm prints the disarmed alarm" "$line"
  run "${q[@]}" alarm list
  expect_out "alarm list after disarm" ""
  kill "$quota_pid" 2>/dev/null
  wait "$quota_pid" 2>/dev/null
}

# A one-member cluster of its own, started with SUITE_MEMBER_BIN, grown to two with member add
# (a voter, not a learner): member add answers at once, as etcd's does, the new member joins
# with the printed ETCD_INITIAL_CLUSTER and serves what was written before it, and both take
# writes.
test_grow_from_one_member() {
  local peer_port client_port
  two_free_ports
  local peer="http://127.0.0.1:$peer_port" client="http://127.0.0.1:$client_port"
  BALLOT_WAL_SEGMENT_BYTES=4194304 "$SUITE_MEMBER_BIN" --name suite-solo \
    --data-dir "$work/solo" --initial-cluster "suite-solo=$peer" --initial-cluster-token suite-solo \
    --initial-advertise-peer-urls "$peer" --listen-peer-urls "$peer" \
    --listen-client-urls "$client" --advertise-client-urls "$client" >"$work/solo.log" 2>&1 &
  local solo_pid=$!
  background_pids+=("$solo_pid")
  local solo=(etcdctl --endpoints="127.0.0.1:$client_port" --command-timeout=15s)
  local deadline=$((SECONDS + 30))
  until "${solo[@]}" endpoint health >/dev/null 2>&1 || [ $SECONDS -ge $deadline ]; do sleep 0.1; done
  run "${solo[@]}" put "$P/solo/before" v1
  expect_out "a put on the one-member cluster" "OK"

  local solo_client_port=$client_port
  two_free_ports
  local second_peer="http://127.0.0.1:$peer_port" second_client="http://127.0.0.1:$client_port"
  run "${solo[@]}" member add suite-second --peer-urls="$second_peer"
  local initial_cluster
  initial_cluster=$(sed -n 's/^ETCD_INITIAL_CLUSTER="\(.*\)"$/\1/p' <<<"$OUT")
  # Both members, in the order of their IDs.
  local sorted_cluster
  sorted_cluster=$(tr , '\n' <<<"$initial_cluster" | sort | paste -sd,)
  check "member add of a voter to a one-member cluster answers at once" \
    "Member ... added, ETCD_INITIAL_CLUSTER with both members" \
    test "$RC" -eq 0 -a "$sorted_cluster" = "suite-second=$second_peer,suite-solo=$peer"
  BALLOT_WAL_SEGMENT_BYTES=4194304 "$SUITE_MEMBER_BIN" --name suite-second \
    --data-dir "$work/second" --initial-cluster "$initial_cluster" \
    --initial-cluster-state existing --initial-advertise-peer-urls "$second_peer" \
    --listen-peer-urls "$second_peer" --listen-client-urls "$second_client" \
    --advertise-client-urls "$second_client" >"$work/second.log" 2>&1 &
  local second_pid=$!
  background_pids+=("$second_pid")
  local second=(etcdctl --endpoints="127.0.0.1:$client_port" --command-timeout=15s)
  deadline=$((SECONDS + 30))
  until run "${second[@]}" get "$P/solo/before" --print-value-only; [ "$OUT" = "v1" ] || [ $SECONDS -ge $deadline ]; do
    sleep 0.2
  done
  expect_out "the second member serves what was written before it joined" "v1"
  run "${second[@]}" put "$P/solo/after" v2
  expect_out "a put through the second member" "OK"
  run "${solo[@]}" get "$P/solo/after" --print-value-only
  expect_out "the first member reads it" "v2"
  # A joined member records its name with a proposal of its own once it has caught up (etcd's
  # publish); etcd serves no client before that is applied, Ballot may, so wait for it.
  local started=0
  deadline=$((SECONDS + 15))
  until [ "$started" -eq 2 ] || [ $SECONDS -ge $deadline ]; do
    run etcdctl --endpoints="127.0.0.1:$solo_client_port,127.0.0.1:$client_port" member list
    started=$(grep -c ', started, suite-.*, false$' <<<"$OUT")
    [ "$started" -eq 2 ] || sleep 0.2
  done
  check "member list shows two started voters" "2 lines ending in false" [ "$started" -eq 2 ]
  kill "$solo_pid" "$second_pid" 2>/dev/null
  wait "$solo_pid" "$second_pid" 2>/dev/null
}

# --- snapshot ------------------------------------------------------------------------------

test_snapshot() {
  local revision
  revision=$(current_revision)
  run etcdctl --endpoints="$first_endpoint" snapshot save "$work/snap.db"
  expect_out "snapshot save" "Snapshot saved at $work/snap.db"
  check "snapshot file is written and non-empty" "$work/snap.db with data" [ -s "$work/snap.db" ]
  check "no partial snapshot file is left" "no $work/snap.db.part" [ ! -e "$work/snap.db.part" ]
  # The backup is etcd's backend database: etcdctl reads it and restores it as an etcd
  # member's data directory.
  run etcdctl snapshot status "$work/snap.db" -w json
  expect_match "snapshot status reads the backup at the revision it was taken" \
    '\{"hash":[0-9]+,"revision":'"$revision"',"totalKey":[0-9]+,"totalSize":[0-9]+\}'
  run etcdctl snapshot restore "$work/snap.db" --data-dir "$work/restored" --name restored \
    --initial-cluster restored=http://127.0.0.1:1 --initial-advertise-peer-urls http://127.0.0.1:1
  check "snapshot restore makes a data directory of the backup" "$work/restored/member/snap/db" \
    [ "$RC" -eq 0 -a -s "$work/restored/member/snap/db" ]
}

# --- lock ----------------------------------------------------------------------------------

test_lock() {
  run ctl lock "$P/lock1" echo hi
  expect_out "lock runs a command while holding the lock" "hi"

  "${bg_ctl[@]}" lock "$P/lock2" >"$work/lock-holder.out" 2>"$work/lock-holder.err" &
  local holder=$!
  background_pids+=("$holder")
  wait_for_lines "$work/lock-holder.out" 1
  OUT=$(head -1 "$work/lock-holder.out") RC=0
  expect_match "lock without a command prints the lock key" "$P/lock2/$HEX"
  local holder_key=$OUT
  run ctl get --prefix "$P/lock2/" --keys-only
  expect_out "the lock key exists while held" "$(lines "$holder_key" "")"
  run timeout 3 etcdctl --endpoints="$ENDPOINTS" lock "$P/lock2" echo second
  check "a second locker waits while the lock is held" "timeout (124), no output; got $RC '$OUT'" \
    timed_out_silently
  kill "$holder"
  wait "$holder" 2>/dev/null
  run ctl lock "$P/lock2" echo third
  expect_out "the lock is free once its holder exits" "third"
  run ctl get --prefix "$P/lock2/"
  expect_out "no lock key is left" ""
}

# --- elect ---------------------------------------------------------------------------------

test_elect() {
  local e="$P/election"
  "${bg_ctl[@]}" elect "$e" p1 >"$work/elect-p1.out" 2>"$work/elect-p1.err" &
  local p1=$!
  background_pids+=("$p1")
  wait_for_lines "$work/elect-p1.out" 2
  OUT=$(cat "$work/elect-p1.out") RC=0
  expect_match "elect prints the leader key and proposal" "$e/$HEX
p1"
  local leader_key
  leader_key=$(head -1 <<<"$OUT")
  run timeout 3 etcdctl --endpoints="$ENDPOINTS" elect -l "$e"
  RC=$([ "$RC" -eq 124 ] && echo 0 || echo "$RC")
  expect_out "elect -l observes the leader" "$(lines "$leader_key" p1)"

  "${bg_ctl[@]}" elect -l "$e" >"$work/elect-observer.out" 2>"$work/elect-observer.err" &
  local observer=$!
  background_pids+=("$observer")
  wait_for_lines "$work/elect-observer.out" 2
  "${bg_ctl[@]}" elect "$e" p2 >"$work/elect-p2.out" 2>"$work/elect-p2.err" &
  local p2=$!
  background_pids+=("$p2")
  wait_for_key_count "$e/" 2
  run ctl get --prefix "$e/" --print-value-only --sort-by=CREATE
  expect_out "a second candidate queues behind the leader" "$(lines p1 p2)"
  check "the second candidate is not elected while the first leads" "no output from p2" \
    [ ! -s "$work/elect-p2.out" ]
  kill "$p1"
  wait "$p1" 2>/dev/null
  wait_for_text "$work/elect-p2.out" p2
  OUT=$(cat "$work/elect-p2.out") RC=0
  expect_match "the second candidate is elected when the first resigns" "$e/$HEX
p2"
  wait_for_text "$work/elect-observer.out" p2
  OUT=$(cat "$work/elect-observer.out") RC=0
  expect_match "elect -l follows the change of leader" "$leader_key
p1
$e/$HEX
p2"
  kill "$p2" "$observer"
  wait "$p2" "$observer" 2>/dev/null
}

# --- move-leader ---------------------------------------------------------------------------

test_move_leader() {
  local status leader follower
  status=$(ctl endpoint status)
  leader=$(awk -F', ' '$5 == "true" {print $2}' <<<"$status")
  follower=$(awk -F', ' '$5 == "false" {print $2; exit}' <<<"$status")
  run ctl move-leader "$follower"
  expect_out "move-leader to a follower" "Leadership transferred from $leader to $follower"
  local deadline=$((SECONDS + 10)) now_leader=""
  while [ $SECONDS -lt $deadline ]; do
    now_leader=$(ctl endpoint status 2>/dev/null | awk -F', ' '$5 == "true" {print $2}')
    [ "$now_leader" = "$follower" ] && break
    sleep 0.1
  done
  check "endpoint status shows the new leader" "leader $follower, got '$now_leader'" [ "$now_leader" = "$follower" ]
  run ctl move-leader 1234
  expect_error "move-leader to an unknown member" "etcdserver: bad leader transferee" FailedPrecondition
  run ctl put "$P/after-move" ok
  expect_out "writes work after a leader move" "OK"
}

# --- check datascale ---------------------------------------------------------------------------

# 10,000 puts of 1 KiB from 50 clients, with each member's process_resident_memory_bytes read
# from /metrics before and after; etcdctl then deletes its keys, compacts and defragments.
test_check_datascale() {
  run ctl check datascale --load=s
  OUT=$(tr '\r' '\n' <<<"$OUT" | sed -E 's/^.*[0-9]+ \/ [0-9]+ .*(PASS|FAIL)/\1/; /^ *[0-9]+ \/ [0-9]+ /d' | grep -v '^$' | grep -v '^Start data scale check')
  expect_match "check datascale --load=s passes" "PASS: Approximate system memory used : [0-9.]+ MB."
  run ctl get --prefix /etcdctl-check-datascale/ --keys-only
  expect_out "check datascale leaves no keys" ""
}

# --- check perf ----------------------------------------------------------------------------

test_check_perf() {
  ctl del --prefix /etcdctl-check-perf/ >/dev/null
  run ctl check perf --load=s
  # The progress bar redraws with \r; its last state can share a line with the first result
  # ("59 / 60 ... 98.33%PASS: Throughput ..."), so cut the bar off such lines before dropping
  # the bar-only ones.
  OUT=$(tr '\r' '\n' <<<"$OUT" | sed -E 's/^ *[0-9]+ \/ [0-9]+ .*(PASS|FAIL)/\1/; /^ *[0-9]+ \/ [0-9]+ /d' | grep -v '^$')
  expect_match "check perf --load=s passes" "PASS: Throughput is $NUM writes/s
PASS: Slowest request took [0-9.]+s
PASS: Stddev is [0-9.]+s
PASS"
}

echo "# etcdctl $(etcdctl version | head -1 | awk '{print $3}') against $ENDPOINTS, keys under $P"
test_put_get
test_del
test_txn
test_watch
test_compaction
test_lease
test_member
if [ -n "${SUITE_MEMBER_BIN:-}" ]; then
  test_member_join
else
  echo "# skipped: a learner that joins and is promoted (set SUITE_MEMBER_BIN)"
fi
test_endpoint
test_maintenance
if [ -n "${SUITE_MEMBER_BIN:-}" ]; then
  test_quota_alarm
  test_grow_from_one_member
else
  echo "# skipped: the quota's NOSPACE alarm on a member of its own (set SUITE_MEMBER_BIN)"
  echo "# skipped: growing a one-member cluster with member add (set SUITE_MEMBER_BIN)"
fi
test_snapshot
test_lock
test_elect
test_move_leader
test_check_datascale
if $skip_slow; then echo "# skipped: check perf --load=s (--skip-slow)"; else test_check_perf; fi
ctl del --prefix "$P/" >/dev/null 2>&1 || true

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
