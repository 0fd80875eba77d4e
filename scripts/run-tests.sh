#!/usr/bin/env bash
# The whole suite in three streams, so that `make test` fits well inside CI's limit on a 2-core host:
#   1. the vcld suite (VCL's real web + vcld: mostly vcld's own polling waits) in the background,
#   2. everything else but the fault suite, at the same time,
#   3. the fault suite alone afterwards: it kills and restarts the first host's libvirtd, which
#      must not happen under another stream's guests.
# Each stream's output is printed in full; the exit status is non-zero if any stream failed.
# Extra arguments go to every pytest run (e.g. -x). Logs stay in $VCL_TEST_LOGS (default .test-logs).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
LOGS=${VCL_TEST_LOGS:-.test-logs}
mkdir -p "$LOGS"

start=$(date +%s)
"$BIN/pytest" -q -m vcld tests/vcld "$@" >"$LOGS/vcld.log" 2>&1 &
vcld_pid=$!
"$BIN/pytest" -q -m "not vcld and not faults" "$@" 2>&1 | tee "$LOGS/main.log"
main_rc=${PIPESTATUS[0]}
wait "$vcld_pid"
vcld_rc=$?
echo "=== vcld suite (ran beside the main stream) ==="
cat "$LOGS/vcld.log"
"$BIN/pytest" -q -m faults "$@" 2>&1 | tee "$LOGS/faults.log"
faults_rc=${PIPESTATUS[0]}

echo "=== streams: main rc=$main_rc, vcld rc=$vcld_rc, faults rc=$faults_rc; $(($(date +%s) - start)) s in all ==="
# pytest's 5 means "no tests collected": a stream that collected nothing is a failure here too.
for rc in "$main_rc" "$vcld_rc" "$faults_rc"; do
    [ "$rc" -eq 0 ] || exit 1
done
