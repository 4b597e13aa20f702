#!/usr/bin/env bash
# How deep each target's corpus goes: replays every input of fuzz/corpus/<target> and
# fuzz/seeds/<target> once through the target itself (with M365_FUZZ_DEPTH set, each
# target prints the states an input reached: a login, STARTTLS, a DATA end, a header
# sender, a BDAT LAST, ...) and counts the inputs per state.
#   fuzz/depth.sh [TARGET...]    default: every target
set -euo pipefail
cd "$(dirname "$0")"
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
for target in "${targets[@]}"; do
    bin="target/$triple/release/$target"
    [[ -x "$bin" ]] || cargo +nightly fuzz build -O -s none "$target" >/dev/null 2>&1
    files=$(find "corpus/$target" "seeds/$target" -maxdepth 1 -type f 2>/dev/null | wc -l)
    if [[ "$files" -eq 0 ]]; then
        echo "$target: no inputs"
        continue
    fi
    counts=$(find "corpus/$target" "seeds/$target" -maxdepth 1 -type f -print0 2>/dev/null |
        M365_FUZZ_DEPTH=1 xargs -0 -n 500 "$bin" -runs=1 2>&1 |
        sed -n 's/^depth: //p' | tr ' ' '\n' | grep -v '^-$' | sort | uniq -c |
        awk '{printf " %s=%s", $2, $1}')
    echo "$target: $files inputs;${counts:- none reached a deep state}"
done
