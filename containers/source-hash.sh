#!/usr/bin/env bash
# Print the hash of what the service image is built from: the Dockerfile and every file that its
# COPY lines copy, tracked by git or not (an untracked module is in the build context all the same),
# caches excepted (the ones .dockerignore keeps out of the build context).
#
#   containers/source-hash.sh [ROOT]     (ROOT: the directory of the Dockerfile; default: this repo)
#
# build-images.sh tags the service image with this hash, so that any change to what the image
# contains makes a new image. tests/unit/test_source_hash.py runs it on a copy of the project.
set -euo pipefail

root="${1:-$(cd "$(dirname "$0")/.." && pwd)}"
cd "$root"

# The sources of every COPY line: its words less the instruction, the --flags and the destination.
sources=(Dockerfile)
while read -r -a words; do
    args=()
    for word in "${words[@]:1}"; do
        [[ $word == --* ]] || args+=("$word")
    done
    ((${#args[@]} >= 2)) || continue
    for src in "${args[@]:0:${#args[@]}-1}"; do
        # a glob (COPY *.toml ./) is expanded here as the builder would; a missing source fails
        # the build, and here too
        matches=()
        mapfile -t matches < <(compgen -G "$src" || true)
        ((${#matches[@]})) || { echo "source-hash: $src (COPY in the Dockerfile) not found" >&2; exit 1; }
        sources+=("${matches[@]}")
    done
done < <(grep -iE '^[[:space:]]*COPY[[:space:]]' Dockerfile)

# Each file's path and content hash, in a fixed order; caches (as in .dockerignore) left out.
find "${sources[@]}" \
    \( -name __pycache__ -o -name '*.pyc' -o -name '*.egg-info' -o -name .mypy_cache \
       -o -name .pytest_cache -o -name .ruff_cache \) -prune \
    -o \( -type f -o -type l \) -print0 \
    | LC_ALL=C sort -z -u \
    | xargs -0 -r sha256sum \
    | sha256sum | cut -c1-12
