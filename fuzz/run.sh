#!/usr/bin/env bash
# Runs fuzz targets from their committed seeds and dictionaries (fuzz/README.md).
#   fuzz/run.sh [-t SECONDS] [TARGET...]    default: every target, 60 s each
# New inputs go to fuzz/corpus/<target> (not committed), crashes to fuzz/artifacts/.
# Prints, per target, what libFuzzer reported at the end: runs, coverage, corpus size.
set -euo pipefail
cd "$(dirname "$0")"
seconds=60
if [[ "${1:-}" == "-t" ]]; then
    seconds=$2
    shift 2
fi
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    args=("-max_total_time=$seconds" "-print_final_stats=1")
    [[ -f "dict/$target.dict" ]] && args+=("-dict=dict/$target.dict")
    corpora=("corpus/$target")
    [[ -d "seeds/$target" ]] && corpora+=("seeds/$target")
    echo "== fuzz $target for $seconds s (${corpora[*]}, ${args[*]})"
    log="corpus/$target.log"
    if ! cargo +nightly fuzz run -O -s none "$target" "${corpora[@]}" -- "${args[@]}" >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "== fuzz $target FAILED (log: fuzz/$log, input: fuzz/artifacts/$target/)"
        exit 1
    fi
    grep -E '^(#[0-9]+ +DONE|Done [0-9]+ runs|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || tail -n 3 "$log"
done
