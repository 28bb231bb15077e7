#!/usr/bin/env bash
# Runs the fault suite (make faults) and writes its results table into
# docs/reliability.md, between the lines <!-- faults:begin --> and
# <!-- faults:end -->, with the date, commit, core count and wall time of
# the run. Fails, leaving the document as it was, when a test fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

doc=docs/reliability.md
grep -q '<!-- faults:begin -->' "$doc" && grep -q '<!-- faults:end -->' "$doc" ||
	{ echo "faults-report: $doc has no faults:begin/faults:end markers" >&2; exit 1; }

results=$(mktemp)
table=$(mktemp)
trap 'rm -f "$results" "$table"' EXIT

started=$SECONDS
make faults FAULTS_RESULTS="$results"
[[ -s $results ]] || { echo "faults-report: the suite wrote no results" >&2; exit 1; }

{
	echo
	echo "Last run: $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD), $(nproc) cores, \`make faults\` wall time $((SECONDS - started)) s."
	echo
	cat "$results"
	echo
} >"$table"

awk -v table="$table" '
	/<!-- faults:begin -->/ { print; while ((getline line < table) > 0) print line; skip = 1; next }
	/<!-- faults:end -->/ { skip = 0 }
	!skip { print }
' "$doc" >"$doc.new"
mv "$doc.new" "$doc"
echo "faults-report: wrote the results into $doc"
