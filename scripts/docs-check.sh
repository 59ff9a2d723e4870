#!/usr/bin/env bash
# Fails when docs/ is not what `make generate` produces from templates/ and
# examples/: docs are generated, never edited by hand.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# tfplugindocs resolves the output directory relative to the provider
# directory, so render into the (ignored) .cache inside the repository.
out=".cache/docs-check"
rm -rf "$out"
mkdir -p "$out"
trap 'rm -rf "$out"' EXIT
scripts/generate-docs.sh "$out/docs"
if ! diff -r docs "$out/docs" >"$out/diff"; then
	echo "docs/ is stale: run 'make generate' and commit the result" >&2
	head -50 "$out/diff" >&2
	exit 1
fi
