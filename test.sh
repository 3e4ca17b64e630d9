#!/usr/bin/env bash
# Runs every test of the solution on a fresh machine: installs what the tests need (see scripts/test-deps.sh),
# runs `dotnet test` on every test project, and ends with the totals line "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")"

results=$(mktemp -d)
# Services started by test-deps.sh say how tests reach them (env file) and how to stop them (cleanup file).
export SWITCHBOARD_TEST_ENV="$results/test-env.sh" SWITCHBOARD_TEST_CLEANUP="$results/test-cleanup.sh"
: >"$SWITCHBOARD_TEST_ENV"; : >"$SWITCHBOARD_TEST_CLEANUP"
trap 'bash "$SWITCHBOARD_TEST_CLEANUP" || true; rm -rf "$results"' EXIT
./scripts/test-deps.sh
# shellcheck disable=SC1090
. "$SWITCHBOARD_TEST_ENV"
status=0
dotnet build Switchboard.slnx -c Release -nologo -v quiet | tail -n 3 || exit 1
dotnet test Switchboard.slnx -c Release --no-build -nologo \
  --logger "trx" --results-directory "$results" -- xUnit.ParallelizeTestCollections=true || status=$?

# The CLI tests once more against the native builds of switchboard and switchboard-agent (what scripts/publish-native.sh ships).
native=$(./scripts/publish-native.sh "$results/native") || { echo "native build failed" >&2; exit 1; }
SWITCHBOARD_TEST_CLI="$native" SWITCHBOARD_TEST_AGENT="$(dirname "$native")/switchboard-agent" dotnet test tests/Switchboard.Cli.Tests -c Release --no-build -nologo \
  --logger "trx" --results-directory "$results/native-trx" || status=$?

passed=0; failed=0
for f in "$results"/*.trx "$results"/native-trx/*.trx; do
  [ -f "$f" ] || continue
  counters=$(grep -o '<Counters [^>]*>' "$f" | head -n1)
  p=$(sed -n 's/.*passed="\([0-9]*\)".*/\1/p' <<<"$counters"); f_=$(sed -n 's/.*failed="\([0-9]*\)".*/\1/p' <<<"$counters")
  passed=$((passed + ${p:-0})); failed=$((failed + ${f_:-0}))
done
if [ "$passed" -eq 0 ] && [ "$status" -eq 0 ]; then
  echo "no tests ran" >&2
  status=1
fi
echo "${passed} passed, ${failed} failed"
exit "$status"
