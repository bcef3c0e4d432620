#!/bin/sh
# Writes the seed inputs the fuzz corpus grew from into fuzz/corpus/<target>/seed-*.
# The seeds are made by code (the ignored test at the bottom of tests/fuzz_corpus.rs),
# so that they follow the gateway's own header writers and example configs.
set -eu
cd "$(dirname "$0")/.."
exec cargo test --test fuzz_corpus -- --ignored --exact write_the_seed_inputs
