"""openqwen.infer.loading: the one dtype vocabulary, the shared model flags and the loader every
generating verb uses."""

from __future__ import annotations

import argparse

import pytest
import torch
from infer_helpers import tiny_model

from openqwen.checkpoint import save_model
from openqwen.infer.loading import (
    DTYPE_CHOICES,
    add_model_arguments,
    load_for_inference,
    load_model_and_tokenizer,
    normalise_dtype,
)
from openqwen.infer.quant import BF16Linear, Int8Embedding, Int8Linear


def test_dtype_vocabulary():
    assert DTYPE_CHOICES == ("auto", "fp32", "bf16", "int8", "int4")
    assert [normalise_dtype(n) for n in ("fp32", "float32", "BF16", "bfloat16", "int8", "INT4", "auto")] == \
        ["fp32", "fp32", "bf16", "bf16", "int8", "int4", "auto"]
    with pytest.raises(ValueError, match="auto, fp32, bf16, int8, int4"):
        normalise_dtype("fp16")


def test_model_flags_share_one_vocabulary(capsys):
    parser = argparse.ArgumentParser(prog="verb")
    add_model_arguments(parser)
    args = parser.parse_args(["--model", "m", "--dtype", "bfloat16", "--threads", "2"])
    assert (args.model, args.tokenizer, args.dtype, args.threads) == ("m", None, "bf16", 2)
    assert parser.parse_args(["--model", "m"]).dtype == "auto"  # the checkpoint decides unless told
    for bad in (["--dtype", "fp16"], ["--threads", "0"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["--model", "m", *bad])
    assert "fp32, bf16, int8" in capsys.readouterr().err


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = tiny_model(seed=3, vocab=512)
    path = tmp_path_factory.mktemp("tiny")
    save_model(model, path)
    return model, path


def test_load_for_inference_precisions(saved):
    model, path = saved
    ids = torch.tensor([[1, 5, 9, 200, 7]])
    with torch.no_grad():
        want = model.eval()(ids)
        fp32 = load_for_inference(path, "float32")
        assert not fp32.training
        torch.testing.assert_close(fp32(ids), want, atol=1e-5, rtol=1e-5)
        int8 = load_for_inference(path, "int8")
        assert any(isinstance(m, Int8Linear) for m in int8.modules())
        assert isinstance(int8.embed_tokens, Int8Embedding)  # no fp32 vocabulary matrix in a quantised model
        err = (int8(ids) - want).abs().max() / want.abs().max()
        assert err < 0.03  # the same function, weights rounded to 8 bits
        bf16 = load_for_inference(path, "bf16")  # bf16 weights in the linears, fp32 compute
        assert all(m.weight.dtype == torch.bfloat16 for m in bf16.modules() if isinstance(m, BF16Linear))
        assert any(isinstance(m, BF16Linear) for m in bf16.modules())
        torch.testing.assert_close(bf16(ids), want, atol=0.1, rtol=0.05)


def test_load_model_and_tokenizer_names_missing_paths(saved, tmp_path):
    _, path = saved
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        load_model_and_tokenizer(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="tokenizer .*elsewhere"):
        load_model_and_tokenizer(path, tokenizer_path=tmp_path / "elsewhere")
