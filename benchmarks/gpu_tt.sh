#!/usr/bin/env bash
# Run a TT benchmark (default benchmarks/tt_scorer.py, what `make bench-tt` runs; SCRIPT=tt_refine.py for
# the other) on an offline GPU machine from a bundle made by `make gpu-bundle`.
# The bundle's wheels go into a scratch folder beside the machine's own PyTorch/JAX (no index, no
# dependencies pulled in), then candidate masks are scored on CUDA.
#
#   bash benchmarks/gpu_tt.sh BUNDLE OUTDIR [the script's options, e.g. --masks 300]
#
# PYTHON picks the interpreter (default python3), DEVICE the scoring device (default cuda;
# DEVICE=cpu tries the bundle on a machine without a GPU).
set -euo pipefail
usage="usage: bash benchmarks/gpu_tt.sh BUNDLE OUTDIR [the script's options]"
[ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }
bundle=$1 out=$2
shift 2
if ! compgen -G "$bundle/wheels/*.whl" > /dev/null; then
    echo "gpu_tt.sh: $bundle/wheels holds no wheels (make one with \`make gpu-bundle\`)" >&2
    exit 2
fi
py=${PYTHON:-python3}
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
"$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$bundle"/wheels/*.whl
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
# PROTES's JAX work is small; kept on the CPU it leaves the GPU to PyTorch (JAX would take 75 % of it).
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
args=(--device "${DEVICE:-cuda}" --threads "$(nproc)" --out "$out")
[ -f "$bundle/checkpoint.pt" ] && args+=(--checkpoint "$bundle/checkpoint.pt")
[ -d "$bundle/data" ] && args+=(--data "$bundle/data")
"$py" "$(dirname "$0")/${SCRIPT:-tt_scorer.py}" "${args[@]}" "$@"
