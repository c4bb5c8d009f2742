"""GGUF export (openqwen.infer.gguf_export) and the ``openqwen quantize`` verb.

The written file is checked by three readers that share no code with the writer: the ``gguf``
package's reader and reference dequantiser (its blocks give exactly our calibrated weights), our own
loader (it reads the blocks back to the very same codes, without a float round trip), and, when a
llama-cpp-python build is at hand (``OPENQWEN_LLAMA_PYTHON`` or /tmp/llamavenv), llama.cpp itself
(its logits on our file agree with ours).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from openqwen.config import get_preset
from openqwen.infer.gptq import QuantFormat, calibrate, quantize_rtn
from openqwen.infer.gptq_format import module_weights, pack_model
from openqwen.model import Qwen

gguf = pytest.importorskip("gguf")

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 512


@pytest.fixture(scope="module")
def tokenizer():
    from openqwen.tokenizer.train import train_tokenizer

    texts = [p.read_text() for p in sorted((ROOT / "openqwen" / "infer").glob("*.py"))[:8]]
    return train_tokenizer(texts, VOCAB, show_progress=False)


def tiny_model(seed: int = 0) -> Qwen:
    torch.manual_seed(seed)
    cfg = get_preset("nano-1m", intermediate_size=256, num_key_value_heads=2, qkv_bias=True, num_hidden_layers=2,
                     vocab_size=VOCAB)
    return Qwen(cfg).eval()


def quantised(fmt: QuantFormat, method: str = "gptq"):
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        results = calibrate(model, ids, fmt, method=method)
        pack_model(model, results, head_int8=False)
    return model, results


def _gguf_block_weights(path: Path) -> dict[str, np.ndarray]:
    """Every quantised tensor of the file, dequantised by the gguf package's reference code, [rows, cols]."""
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(str(path))
    out = {}
    for t in reader.tensors:
        if t.tensor_type in (gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q8_0):
            out[t.name] = dequantize(np.asarray(t.data), t.tensor_type).reshape(-1, int(t.shape[0]))
    return out


@pytest.mark.parametrize("fmt", [QuantFormat(4, 32), QuantFormat(8)])
def test_exported_blocks_dequantise_to_our_weights_and_load_back_to_our_codes(tmp_path, tokenizer, fmt):
    from openqwen.infer.gguf_export import write_gguf
    from openqwen.infer.loading import load_for_inference
    from openqwen.infer.quant import Int4Linear, Int8Linear

    model, results = quantised(fmt)
    path = write_gguf(model, tmp_path / "model.gguf", tokenizer)

    # 1. gguf's reader: each stored tensor is the rows of one of our fused layers, equal bit for bit
    blocks = _gguf_block_weights(path)
    kind = "Q4_0" if fmt.bits == 4 else "Q8_0"
    assert len(blocks) == 2 * 7, sorted(blocks)  # q, k, v, o, gate, up, down per block
    c = model.config
    q_rows, kv_rows = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    qkv = results["layers.1.self_attn.qkv_proj"].dequantize().numpy()
    np.testing.assert_array_equal(blocks["blk.1.attn_k.weight"], qkv[q_rows : q_rows + kv_rows])
    gate_up = results["layers.0.mlp.gate_up_proj"].dequantize().numpy()
    np.testing.assert_array_equal(blocks["blk.0.ffn_up.weight"], gate_up[c.intermediate_size :])
    np.testing.assert_array_equal(blocks["blk.0.ffn_down.weight"], results["layers.0.mlp.down_proj"].dequantize().numpy())
    reader = gguf.GGUFReader(str(path))
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "qwen2"
    assert {t.tensor_type.name for t in reader.tensors} == {kind, "F32"}

    # 2. our loader: auto picks the stored precision and takes the codes as they are (no re-rounding)
    back = load_for_inference(path, "auto", announce=False)
    assert back.precision == ("int4" if fmt.bits == 4 else "int8")
    assert isinstance(back.layers[0].mlp.down_proj, Int4Linear if fmt.bits == 4 else Int8Linear)
    for name, qw in results.items():
        got = module_weights(back.get_submodule(name), name)
        assert torch.equal(got.q, qw.q) and torch.equal(got.scales, qw.scales) and torch.equal(got.zeros, qw.zeros), name
    # the F32 embedding of the file, as int8 rows (quantised inference holds no fp32 vocabulary matrix)
    rounded = Int8Linear(model.embed_tokens.weight, None)
    assert torch.equal(back.embed_tokens.weight, rounded.weight) and torch.equal(back.embed_tokens.scale, rounded.scale)

    # 3. the vocabulary: the file's tokenizer encodes as ours does
    from openqwen.tokenizer import QwenTokenizer

    text = "def int4_linear_from_gguf(layer):\n    return x  # <|endoftext|>"
    assert QwenTokenizer.from_gguf(path).encode(text) == tokenizer.encode(text)


def test_gguf_dequantised_load_equals_the_packed_model(tmp_path, tokenizer):
    """Loaded in fp32 (every block dequantised by our reader), the file computes the packed model's function."""
    from openqwen.checkpoint.gguf import load_gguf
    from openqwen.infer.gguf_export import write_gguf

    model, _ = quantised(QuantFormat(4, 32))
    path = write_gguf(model, tmp_path / "model.gguf", tokenizer)
    dense = copy.deepcopy(model)
    for name, module in list(dense.named_modules()):
        if hasattr(module, "dequantize") and name:
            parent, _, child = name.rpartition(".")
            linear = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            linear.weight.data = module.dequantize()
            if module.bias is not None:
                linear.bias.data = module.bias.clone()
            setattr(dense.get_submodule(parent), child, linear)
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(load_gguf(path)(ids), dense(ids), rtol=0, atol=1e-5)


def test_q4_0_needs_symmetric_groups_of_32():
    from openqwen.infer.gguf_export import check_gguf_format, q4_0_bytes

    for fmt in (QuantFormat(4, 128), QuantFormat(4, 32, symmetric=False)):
        with pytest.raises(ValueError, match="group-size 32"):
            check_gguf_format(fmt)
    with pytest.raises(ValueError, match="Q4_0"):
        q4_0_bytes(quantize_rtn(torch.randn(4, 64), QuantFormat(4, 64)))


def _llama_python() -> str | None:
    exe = os.environ.get("OPENQWEN_LLAMA_PYTHON", "/tmp/llamavenv/bin/python")
    if not Path(exe).exists():
        return None
    ok = subprocess.run([exe, "-c", "import llama_cpp"], capture_output=True).returncode == 0
    return exe if ok else None


LLAMA_LOGITS = r"""
import json, sys
import llama_cpp
path, ids = sys.argv[1], json.loads(sys.argv[2])
llm = llama_cpp.Llama(path, n_ctx=64, n_threads=1, logits_all=True, verbose=False)
llm.eval(ids)
print(json.dumps([list(map(float, llm.scores[i])) for i in range(len(ids))]))
"""


@pytest.mark.parametrize("fmt", [QuantFormat(4, 32), QuantFormat(8)])
def test_llama_cpp_reads_the_exported_file(tmp_path, tokenizer, fmt):
    """llama.cpp (its own loader and kernels) on our file: logits track ours. It rounds activations to
    8-bit blocks for these matmuls (we round to int16), so the agreement is close, not exact."""
    exe = _llama_python()
    if exe is None:
        pytest.skip("no llama-cpp-python build (set OPENQWEN_LLAMA_PYTHON; recipe in docs/benchmarks/inference.md)")
    from openqwen.infer.gguf_export import write_gguf

    model, _ = quantised(fmt)
    path = write_gguf(model, tmp_path / "model.gguf", tokenizer)
    ids = tokenizer.encode("def quantize(model, bits):\n    return model")[:24]
    run = subprocess.run([exe, "-c", LLAMA_LOGITS, str(path), json.dumps(ids)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    theirs = torch.tensor(json.loads(run.stdout))
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0].float()
    rel = float((theirs - ours).norm() / ours.norm())
    assert rel < 0.02, rel
    assert float((theirs.argmax(-1) == ours.argmax(-1)).float().mean()) >= 0.9
