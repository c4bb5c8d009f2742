"""Bad input, every verb: the real ``openqwen`` command in a subprocess answers with exit status 2 and
one line on stderr, ``openqwen VERB: error: ...``, that names what to fix; never a traceback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PROGRESS = re.compile(r"\[\d+:\d+")  # a tqdm bar shows its elapsed time as [00:01...]
NOTE = re.compile(r"\[[a-z-]+\] ")  # the trainer's informational lines, e.g. "[sft] precision fp32 (...)"


def openqwen(*args: str, stdin: str = "", timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "OPENQWEN_DEBUG"}
    environment.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **env)
    return subprocess.run([sys.executable, "-m", "openqwen.cli", *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=timeout, env=environment)


def error_line(result: subprocess.CompletedProcess, verb: str, *names: object) -> str:
    """The one error line of a failed run (progress bars, the trainer's ``[task] precision ...`` note and
    the serve verb's 'loading ...' aside); it must name every one of ``names``."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in re.split(r"[\r\n]", result.stderr)
             if line.strip() and not PROGRESS.search(line) and not line.startswith("loading ")
             and not NOTE.match(line)]
    assert len(lines) == 1, result.stderr
    (line,) = lines
    assert line.startswith(f"openqwen {verb}: error: "), line
    for name in names:
        assert str(name) in line, (name, line)
    return line


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """A 300-token tokenizer trained on a small corpus, and a tiny random model saved with it."""
    import torch

    from openqwen import Qwen, QwenConfig
    from openqwen.checkpoint import save_model
    from openqwen.tokenizer import QwenTokenizer

    root = tmp_path_factory.mktemp("tiny")
    corpus = root / "corpus.jsonl"
    with corpus.open("w") as f:
        for i in range(60):
            f.write(json.dumps({"text": f"Document {i}: the quick brown fox jumps over the lazy dog {i} times. " * 3})
                    + "\n")
    r = openqwen("tokenizer", "train", "--input", corpus, "--vocab-size", "300", "--out", root / "tok", "--quiet")
    assert r.returncode == 0, r.stderr
    torch.manual_seed(0)
    model = Qwen(QwenConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                            seq_length=512))
    save_model(model, root / "model")
    QwenTokenizer.from_pretrained(root / "tok").save_pretrained(root / "model")
    return {"root": root, "corpus": corpus, "tok": root / "tok", "model": root / "model"}


# ------------------------------------------------------------------------------------------ data
def test_data_run_non_jsonl_file(tmp_path):
    bad = tmp_path / "notes.jsonl"
    bad.write_text("this is not JSON\n{\"title\": \"no text field\"}\n")
    line = error_line(openqwen("data", "run", "--in", bad, "--out", tmp_path / "out"), "data", bad, "'text'")
    assert "notes.jsonl:1" in line  # the first bad line


def test_data_pack_empty_corpus(tmp_path, tiny_dirs):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    error_line(openqwen("data", "pack", "--in", empty, "--out", tmp_path / "packed", "--tokenizer", tiny_dirs["tok"]),
               "data", empty, "no documents")


def test_data_missing_input(tmp_path):
    error_line(openqwen("data", "run", "--in", tmp_path / "nowhere", "--out", tmp_path / "out"), "data",
               tmp_path / "nowhere")


# ------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_train_empty_corpus(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    error_line(openqwen("tokenizer", "train", "--input", empty, "--vocab-size", "300", "--out", tmp_path / "tok"),
               "tokenizer", "no training text")


def test_tokenizer_train_missing_input(tmp_path):
    error_line(openqwen("tokenizer", "train", "--input", tmp_path / "nope.txt", "--vocab-size", "300",
                        "--out", tmp_path / "tok"), "tokenizer", tmp_path / "nope.txt")


def test_tokenizer_encode_not_a_tokenizer(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    error_line(openqwen("tokenizer", "encode", "--tokenizer", notes, "hi"), "tokenizer", notes)


# ---------------------------------------------------------------------------------- pretrain, sft
def test_pretrain_missing_data(tmp_path):
    error_line(openqwen("pretrain", "--config", "nano-pretrain.yaml", "--data.path", tmp_path / "packed",
                        "--train.out_dir", tmp_path / "run"), "pretrain", tmp_path / "packed")


def test_pretrain_recipe_not_a_mapping(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("just a sentence\n")
    error_line(openqwen("pretrain", "--config", recipe), "pretrain", recipe)


@pytest.mark.slow
def test_pretrain_nan_loss(tmp_path, tiny_dirs):
    packed = tmp_path / "packed"
    r = openqwen("data", "pack", "--in", tiny_dirs["corpus"], "--out", packed, "--tokenizer", tiny_dirs["tok"],
                 "--seq-len", "32")
    assert r.returncode == 0, r.stderr
    error_line(openqwen("pretrain", "--config", "nano-pretrain.yaml", "--data.path", packed,
                        "--data.tokenizer", tiny_dirs["tok"], "--optim.lr", "1e30", "--optim.warmup_steps", "0",
                        "--train.max_steps", "4", "--train.batch_size", "2", "--data.val_sequences", "2",
                        "--train.eval_every", "0", "--train.out_dir", tmp_path / "run"),
               "pretrain", "loss became nan", "optim.lr")


def test_sft_missing_init_model(tmp_path):
    error_line(openqwen("sft", "--config", "nano-sft.yaml", "--model.init_from", tmp_path / "pretrained",
                        "--train.out_dir", tmp_path / "run"), "sft", tmp_path / "pretrained")


@pytest.mark.slow
def test_sft_nan_loss(tmp_path, tiny_dirs):
    error_line(openqwen("sft", "--config", "nano-sft.yaml", "--model.init_from", tiny_dirs["model"],
                        "--sft.train_files", "builtin", "--sft.builtin_size", "40", "--optim.lr", "1e30",
                        "--optim.warmup_steps", "0", "--train.max_steps", "3", "--train.batch_size", "2",
                        "--train.eval_every", "0", "--train.out_dir", tmp_path / "run"),
               "sft", "loss became nan", "optim.lr")


# ------------------------------------------------------------------------ generate, chat, serve
def test_generate_missing_model(tmp_path):
    error_line(openqwen("generate", "--model", tmp_path / "model", "--prompt", "hi"), "generate", tmp_path / "model")


def test_generate_missing_prompt_file(tmp_path, tiny_dirs):
    error_line(openqwen("generate", "--model", tiny_dirs["model"], "--prompt-file", tmp_path / "prompt.txt"),
               "generate", tmp_path / "prompt.txt")


def test_generate_bad_flag_is_one_line():
    line = error_line(openqwen("generate", "--prompt", "hi", "--dtype", "fp16"), "generate", "--dtype", "fp16")
    assert "fp32, bf16, int8" in line and "--help" in line  # the choices, and where to read more


def test_chat_missing_model(tmp_path):
    error_line(openqwen("chat", "--model", tmp_path / "model.gguf", stdin="hi\n"), "chat", tmp_path / "model.gguf")


def test_serve_corrupt_model(tmp_path, tiny_dirs):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dirs["model"], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # cut short, as by a failed download
    error_line(openqwen("serve", "--model", broken, "--port", "0"), "serve", weights)


# ---------------------------------------------------------------------------- eval, contamination
def test_eval_missing_task_file(tmp_path, tiny_dirs):
    error_line(openqwen("eval", "--model", tiny_dirs["model"], "--task", "gsm8k", "--data", tmp_path / "gsm8k.jsonl"),
               "eval", tmp_path / "gsm8k.jsonl")


def test_contamination_missing_training_data(tmp_path):
    error_line(openqwen("contamination", "--train", tmp_path / "corpus", "--tasks", "humaneval"), "contamination",
               tmp_path / "corpus")


# ------------------------------------------------------------------------------------------ demo
def test_demo_out_is_a_file(tmp_path):
    taken = tmp_path / "report.txt"
    taken.write_text("")
    error_line(openqwen("demo", "--quick", "--out", taken), "demo", taken)


def test_demo_bad_set_value(tmp_path):
    error_line(openqwen("demo", "--quick", "--out", tmp_path / "demo", "--set", "max_steps.sft=many"), "demo",
               "max_steps.sft", "whole number")


# ------------------------------------------------------------------------------- the mechanism
def test_debug_env_shows_the_traceback(tmp_path):
    r = openqwen("generate", "--model", tmp_path / "model", "--prompt", "hi", OPENQWEN_DEBUG="1")
    assert r.returncode == 1 and "Traceback" in r.stderr and "FileNotFoundError" in r.stderr


def test_user_errors_are_one_line_but_bugs_keep_their_traceback(monkeypatch, capsys):
    import openqwen.infer.cli as infer_cli
    from openqwen.cli import main

    def user_error(args):
        raise ValueError("--temperature must be >= 0,\n got -1")

    monkeypatch.setattr(infer_cli, "run_generate", user_error)
    assert main(["generate", "--model", "m", "--prompt", "p"]) == 2
    assert capsys.readouterr().err == "openqwen generate: error: --temperature must be >= 0, got -1\n"

    def bug(args):
        raise KeyError("internal")

    monkeypatch.setattr(infer_cli, "run_generate", bug)
    with pytest.raises(KeyError):
        main(["generate", "--model", "m", "--prompt", "p"])
