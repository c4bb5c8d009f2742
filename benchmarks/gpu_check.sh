#!/usr/bin/env bash
# GPU check of the training loop (not needed by anything else; for a machine with one NVIDIA GPU).
# FSDP2 through torchrun (one process, NCCL) with bf16 autocast: a few steps of a Qwen2.5-0.5B-shaped
# model on random tokens, then tokens/s and MFU against the measured bf16 matmul peak.
#   bash benchmarks/gpu_check.sh            # PY=python3 STEPS=20 PRESET=qwen2.5-0.5b SEQ=2048 BATCH=8
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
STEPS=${STEPS:-20}
PRESET=${PRESET:-qwen2.5-0.5b}
SEQ=${SEQ:-2048}
BATCH=${BATCH:-8}
WORK=${WORK:-$(mktemp -d /tmp/openqwen-gpu-check.XXXX)}
export PYTHONUNBUFFERED=1

"$PY" - "$WORK/data" "$SEQ" "$BATCH" "$STEPS" <<'PYEOF'
import sys, numpy as np
from openqwen.data.packing import pack_documents
out, seq, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
class RandomIds:  # random token ids: speed does not depend on the text
    eos_id, vocab_size = 151643, 151936
    def __init__(self): self.rng = np.random.default_rng(0)
    def encode(self, text): return self.rng.integers(0, 151643, size=len(text)).tolist()
docs = ["x" * (seq * 4 - 1)] * (batch * (steps + 2) // 4 + 1)
pack_documents(docs, RandomIds(), out, seq_len=seq, shuffle=False, progress=False)
PYEOF

"$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m openqwen.cli pretrain \
  --data.path "$WORK/data" --train.out_dir "$WORK/run" --model.preset "$PRESET" --model.vocab_size 151936 \
  --train.max_steps "$STEPS" --train.batch_size "$BATCH" --train.precision bf16 --train.parallel fsdp \
  --optim.lr 3e-4 --optim.warmup_steps 5 --train.save_every 0 --train.progress false --train.tensorboard false

"$PY" - "$WORK/run/metrics.jsonl" <<'PYEOF'
import json, statistics, sys, torch
recs = [json.loads(l) for l in open(sys.argv[1]) if '"train"' in l]
late = recs[len(recs) // 2:]  # skip the warm-up steps
tps = statistics.median(r["tokens_per_s"] for r in late)
mfu = statistics.median(r["mfu"] for r in late)
print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
print(f"loss {recs[0]['loss']:.3f} -> {recs[-1]['loss']:.3f} over {len(recs)} steps")
print(f"FSDP2 + bf16: {tps:,.0f} tokens/s, MFU {mfu:.1%} of the measured bf16 matmul peak "
      f"({recs[-1]['flops_per_s'] / 1e12:.0f} TFLOP/s achieved in the last step)")
PYEOF
