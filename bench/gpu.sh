#!/usr/bin/env bash
# The GPU check in one command (bench/gpu.py): plain scoring vs summary pass vs ablation pass, pairs/s and peak GPU
# memory, on random-weight MonoBERT-large-, MiniLM- and Qwen2-0.5B-shaped models in bfloat16 at 512 tokens; and
# attribution vs batched exact vs one-forward-per-(pair, head) patching of every head on the MonoBERT-large shape.
#
#   bash bench/gpu.sh               # on a CUDA machine (about 5 minutes on one H100)
#   bash bench/gpu.sh --cpu-smoke   # end to end on the CPU with tiny sizes
#
# A lent GPU machine has a CUDA torch but not this project's pinned transformers: wheels carried in .whl/ (built
# here with `pip download --no-deps -d .whl transformers==5.24.0 tokenizers==0.23.3 safetensors==0.8.0
# huggingface_hub ...`) are installed first, offline. Nothing else is needed (no pyarrow, no duckdb, no data).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && ! python -c "import transformers, sys; sys.exit(transformers.__version__ != '5.24.0')" 2>/dev/null; then
  python -m pip install -q --no-index --find-links .whl --no-deps .whl/*.whl
fi
exec python bench/gpu.py "$@"
