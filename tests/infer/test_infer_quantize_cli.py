"""``openqwen quantize``: a float folder in, a quantised checkpoint out that every verb loads back.

The reference is the library path run in the test (load the folder, :func:`calibrate`, :func:`pack_model`):
the verb must write exactly that model, in either format, and bad input must get one line and exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from openqwen.cli import main
from openqwen.config import get_preset
from openqwen.infer.gptq import QuantFormat, calibrate
from openqwen.infer.gptq_format import module_weights, pack_model
from openqwen.model import Qwen

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 512


@pytest.fixture(scope="module")
def float_folder(tmp_path_factory):
    from openqwen.checkpoint.hf import save_hf
    from openqwen.tokenizer.train import train_tokenizer

    texts = [p.read_text() for p in sorted((ROOT / "openqwen" / "infer").glob("*.py"))[:8]]
    tok = train_tokenizer(texts, VOCAB, show_progress=False)
    torch.manual_seed(0)
    cfg = get_preset("nano-1m", intermediate_size=256, num_key_value_heads=2, qkv_bias=True, num_hidden_layers=2,
                     vocab_size=VOCAB)
    folder = tmp_path_factory.mktemp("float")
    save_hf(Qwen(cfg).eval(), folder)
    tok.save_pretrained(folder)
    calib = tmp_path_factory.mktemp("calib") / "texts.jsonl"
    calib.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return folder, calib, tok


def test_quantize_gptq_folder_equals_the_library_path_and_loads_back(float_folder, tmp_path, capsys):
    from openqwen.checkpoint import load_model
    from openqwen.infer.loading import load_for_inference
    from openqwen.infer.quantize_run import calibration_windows, read_calibration_texts

    folder, calib, tok = float_folder
    out = tmp_path / "int4"
    rc = main(["quantize", "--model", str(folder), "--out", str(out), "--group-size", "32", "--calibration", str(calib),
               "--samples", "6", "--seq-len", "48", "--threads", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    summary = _summary(printed)
    assert summary["method"] == "gptq" and summary["bits"] == 4 and summary["group_size"] == 32

    # the reference: the same windows (same seed) through the library
    windows = calibration_windows(read_calibration_texts(str(calib)), tok, 6, 48, seed=0)
    ref = load_model(folder, dtype="fp32")
    with torch.no_grad():
        results = calibrate(ref, windows, QuantFormat(4, 32), log=None)
        pack_model(ref, results, head_int8=False)
    back = load_for_inference(out, "auto", announce=False)
    assert back.precision == "gptq"
    for name, qw in results.items():
        got = module_weights(back.get_submodule(name), name)
        assert torch.equal(got.q, qw.q) and torch.equal(got.scales, qw.scales), name
    assert (out / "tokenizer_config.json").exists() and "quantize: 6 calibration windows of 48 tokens" in printed


def _summary(printed: str) -> dict:
    """The verb's last output: a JSON object after its progress lines."""
    return json.loads(printed[printed.index("\n{") + 1 :] if not printed.startswith("{") else printed)


def test_quantize_rtn_gguf_loads_back_as_int8(float_folder, tmp_path, capsys):
    from openqwen.checkpoint import load_model
    from openqwen.infer.loading import load_for_inference

    folder, _, _ = float_folder
    out = tmp_path / "q8"
    assert main(["quantize", "--model", str(folder), "--out", str(out), "--bits", "8", "--method", "rtn",
                 "--format", "gguf"]) == 0
    summary = _summary(capsys.readouterr().out)
    assert summary["out"].endswith("model.gguf") and summary["format"] == "gguf"
    back = load_for_inference(out / "model.gguf", "auto", announce=False)
    assert back.precision == "int8"
    ref = load_model(folder, dtype="fp32")
    with torch.no_grad():
        results = calibrate(ref, torch.zeros(1, 1, dtype=torch.long), QuantFormat(8), method="rtn", log=None)
    for name, qw in results.items():
        got = module_weights(back.get_submodule(name), name)
        assert torch.equal(got.q, qw.q) and torch.equal(got.scales, qw.scales), name


@pytest.mark.parametrize("extra, message", [
    (["--format", "gguf", "--group-size", "128"], "group-size 32"),
    (["--format", "gguf", "--asym"], "group-size 32"),
    (["--group-size", "48"], "power of two"),
    (["--calibration", "/nonexistent/texts.txt"], "does not exist"),
    (["--seq-len", "100000", "--samples", "1"], "fewer than one window"),
])
def test_quantize_bad_input_is_one_line_and_exit_2(float_folder, tmp_path, capsys, extra, message):
    folder, calib, _ = float_folder
    args = ["quantize", "--model", str(folder), "--out", str(tmp_path / "o")]
    if "--calibration" not in extra:
        args += ["--calibration", str(calib)]
    assert main(args + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("openqwen quantize: error:") and message in err[0], err


def test_quantize_missing_model_is_one_line(tmp_path, capsys):
    assert main(["quantize", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--method", "rtn"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0], err
