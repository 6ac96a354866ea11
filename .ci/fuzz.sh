#!/usr/bin/env bash
# Fuzzes every Go fuzz target (func FuzzX in a *_test.go) for a bounded time
# each, one after another, and stops at the first failure. go test then
# leaves the failing input in the package's testdata/fuzz/FuzzX/, where plain
# `go test` replays it until it passes.
#
#   FUZZTIME      time per target (go test -fuzztime), default 5s
#   FUZZPARALLEL  fuzzing workers per target, default 2
#   FUZZPKGS      packages to search (default ./...)
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
FUZZTIME=${FUZZTIME:-5s}
FUZZPARALLEL=${FUZZPARALLEL:-2}
FUZZPKGS=${FUZZPKGS:-./...}

# "import/path dir" of every package, then its fuzz targets from its test files.
targets=()
while read -r pkg dir; do
	while read -r name; do
		targets+=("$pkg $name")
	done < <(grep -hoE '^func Fuzz[A-Za-z0-9_]*\([A-Za-z_]+ \*testing\.F\)' "$dir"/*_test.go 2>/dev/null | sed -E 's/^func ([A-Za-z0-9_]+).*/\1/' | sort -u)
done < <($GO list -f '{{.ImportPath}} {{.Dir}}' "$FUZZPKGS")

if [ ${#targets[@]} -eq 0 ]; then
	echo "fuzz: no fuzz targets found in $FUZZPKGS" >&2
	exit 1
fi
echo "fuzz: ${#targets[@]} targets, $FUZZTIME each, $FUZZPARALLEL workers"

log=$(mktemp)
trap 'rm -f "$log"' EXIT

# fuzz_one runs one target and prints ok, flake or fail. A run that ends
# with only "context deadline exceeded" and writes no input is Go's own
# coordinator race at the -fuzztime deadline (go.dev/issue/75804, fixed in
# Go 1.27), not a finding.
fuzz_one() {
	if $GO test -run '^$' -fuzz "^$2\$" -fuzztime "$FUZZTIME" -parallel "$FUZZPARALLEL" "$1" >"$log" 2>&1; then
		echo ok
	elif grep -q 'context deadline exceeded' "$log" && ! grep -q 'Failing input written to' "$log"; then
		echo flake
	else
		echo fail
	fi
}

start=$SECONDS
flakes=0
for t in "${targets[@]}"; do
	read -r pkg name <<<"$t"
	t0=$SECONDS
	result=$(fuzz_one "$pkg" "$name")
	if [ "$result" = flake ]; then
		result=$(fuzz_one "$pkg" "$name") # once more
	fi
	execs=$(grep -o "execs: [0-9]*" "$log" | tail -1 | cut -d" " -f2 || true)
	printf '%-5s %-28s %-36s %4ds  %s execs\n' "$result" "$name" "$pkg" $((SECONDS - t0)) "${execs:-?}"
	case $result in
	flake)
		flakes=$((flakes + 1))
		;;
	fail)
		cat "$log"
		if input=$(grep -o 'testdata/fuzz/[^ ]*' "$log" | head -1) && [ -n "$input" ]; then
			echo "fuzz: $name failed on $input (replay: $GO test -run '^$name\$' $pkg)" >&2
		else
			echo "fuzz: $name could not run (see above)" >&2
		fi
		exit 1
		;;
	esac
done
echo "fuzz: ${#targets[@]} targets passed in $((SECONDS - start))s ($flakes stopped early by go.dev/issue/75804)"
