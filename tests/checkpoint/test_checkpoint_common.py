"""The declarative name maps (each used both ways, each naming what the other side calls its tensors)
and loading as a thread-safe operation."""

from __future__ import annotations

import threading

import pytest
import torch

from openqwen import Qwen, QwenConfig
from openqwen.checkpoint import load_model, save_model
from openqwen.checkpoint.common import NameMap, Rename
from openqwen.checkpoint.gguf import GGUF_NAMES
from openqwen.checkpoint.hf import QWEN2_NAMES
from openqwen.checkpoint.v1 import V1_NAMES

from hf_reference import randomise

CONFIGS = {
    "gqa-untied": QwenConfig(vocab_size=61, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2),
    "mha-tied": QwenConfig(vocab_size=61, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                           num_attention_heads=4, tie_word_embeddings=True),
}
MAPS = {"qwen2": QWEN2_NAMES, "v1": V1_NAMES, "gguf-qwen2": GGUF_NAMES["qwen2"], "gguf-qwen": GGUF_NAMES["qwen"]}


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("fmt", MAPS)
def test_a_name_map_exports_and_imports_back_exactly(fmt, config):
    c = CONFIGS[config]
    model = randomise(Qwen(c))
    state = model.state_dict()
    theirs = MAPS[fmt].to_theirs(state, c)
    back = MAPS[fmt].to_ours(theirs, c, "test")
    expected = {k: v for k, v in state.items() if not (c.tie_word_embeddings and k == "lm_head.weight")}
    assert back.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(back[name], tensor), name


@pytest.mark.parametrize("config", CONFIGS)
def test_the_qwen2_map_names_exactly_transformers_tensors(config):
    transformers = pytest.importorskip("transformers")
    from openqwen.checkpoint import transformers_config

    c = CONFIGS[config]
    theirs = set(transformers.Qwen2ForCausalLM(transformers_config(c)).state_dict())
    ours = set(QWEN2_NAMES.to_theirs(Qwen(c).state_dict(), c))
    assert ours == theirs - ({"lm_head.weight"} if c.tie_word_embeddings else set())


@pytest.mark.parametrize("arch", ["qwen2", "qwen"])
def test_the_gguf_maps_name_exactly_the_gguf_package_tensors(arch):
    gguf = pytest.importorskip("gguf")
    c = CONFIGS["gqa-untied"]
    model_arch = {"qwen2": gguf.MODEL_ARCH.QWEN2, "qwen": gguf.MODEL_ARCH.QWEN}[arch]
    known = {name.format(bid=i) for name in (gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[model_arch])
             for i in range(c.num_hidden_layers)}
    ours = GGUF_NAMES[arch].to_theirs(Qwen(c).state_dict(), c)
    assert {name.removesuffix(".weight").removesuffix(".bias") for name in ours} <= known


def test_a_rule_that_does_not_fit_its_split_is_refused():
    with pytest.raises(ValueError, match="malformed"):
        Rename("layers.{i}.self_attn.qkv_proj.weight", ("q", "k"), split="qkv")
    with pytest.raises(AssertionError, match="no rule"):  # a map that forgets a parameter
        NameMap([Rename("embed_tokens.weight", ("e",))]).plan(CONFIGS["mha-tied"])


def test_loading_in_one_thread_leaves_models_built_in_another_initialised(tmp_path):
    c = CONFIGS["gqa-untied"]
    save_model(randomise(Qwen(c)), tmp_path)
    torch.manual_seed(0)
    reference = Qwen(c).state_dict()
    stop = threading.Event()

    def load_repeatedly():
        while not stop.is_set():
            load_model(tmp_path)

    loader = threading.Thread(target=load_repeatedly)
    loader.start()
    try:
        for _ in range(30):
            torch.manual_seed(0)
            built = Qwen(c).state_dict()
            for name, tensor in reference.items():
                assert torch.equal(built[name], tensor), name
    finally:
        stop.set()
        loader.join()
