#!/usr/bin/env bash
# The students' GPU checks of issue 20 as one script (a few minutes on one H100/H200): the
# placements' bit-identity on CUDA, then benchmarks/student_throughput.py on the device-resident
# set, the host-tensor set (the path measured at 3,412 images/s on 2026-11-24), with
# torch.compile, and every student of config/imagenet1k.yaml. Figures land in $OUT (default .).
#
#     bash benchmarks/student_gpu_check.sh            # from the repository root
set -euo pipefail
OUT=${OUT:-.}
PY=${PY:-.venv/bin/python}
export PYTHONPATH=$PWD/src
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/student_gpu.txt"
$PY -m pytest -q tests/test_student_data.py -k cuda 2>&1 | tail -3 | tee -a "$OUT/student_gpu.txt"
bench() { $PY benchmarks/student_throughput.py --device cuda "$@" 2>/dev/null | tee -a "$OUT/student_gpu.txt"; }
bench --json "$OUT/student_device.json"
bench --path memory --json "$OUT/student_memory.json"
bench --compile --json "$OUT/student_compile.json"
bench --grid --json "$OUT/student_grid.json"
