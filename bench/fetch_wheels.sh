#!/usr/bin/env bash
# Download, on a machine that reaches PyPI, the wheels the GPU image lacks (datasets and its dill/multiprocess, trl,
# orjson, Liger's kernels, PyAV for the vlm check's video, math-verify and its LaTeX parser for the reasoning_rl
# check) into .whl/ at the repository root, for bench/gpu_check.sh. The versions are the ones installed here (what
# the CPU suite tested); the wheels are for the GPU image's Python 3.12 on x86_64. .whl/ is not committed: the
# device tool carries it (`carry: [".whl"]`, 64 MiB at most, checked below).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
version() { python3 -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }
for name in datasets dill multiprocess trl liger-kernel orjson av math-verify latex2sympy2_extended antlr4-python3-runtime; do
  v=$(version "$name")
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "${name}${v:+==$v}"
done
size=$(du -sm .whl | cut -f1)
ls -1 .whl
echo "wheels: ${size} MiB in .whl/"
[ "$size" -le 60 ] || { echo "over the 64 MiB the device tool carries (with the working tree)" >&2; exit 1; }
