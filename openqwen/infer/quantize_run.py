"""The work of ``openqwen quantize`` (:mod:`openqwen.infer.quantize_cli` is its torch-free parser):
calibration text to token windows, :func:`openqwen.infer.gptq.calibrate`, and the output folder."""

from __future__ import annotations

import argparse
import random
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..artifacts import artifact_path
from ..checkpoint import load_model
from ..data.demo_corpus import code_documents
from ..data.io import read_json_lines
from .gptq import QuantFormat, bits_per_weight, calibrate
from .gptq_format import pack_model, save_gptq

BUILTIN_CODE_BYTES = 400_000


def shakespeare_plays(half: int) -> list[str]:
    """Every other play of the shakespeare artifact (``half`` 0: calibration, 1: held out); [] without it."""
    path = artifact_path("shakespeare")
    if path is None:
        return []
    with zipfile.ZipFile(path) as z:
        names = sorted(n for n in z.namelist() if n.endswith((".txt", ".md")))
        return [z.read(n).decode("utf-8", errors="replace") for n in names[half::2]]


def builtin_calibration_texts() -> list[str]:
    """Python standard-library source (the first files in path order) and half of the Shakespeare plays."""
    docs, _ = code_documents(BUILTIN_CODE_BYTES, 100_000)
    return [d["text"] for d in docs] + shakespeare_plays(0)


def read_calibration_texts(source: str) -> list[str]:
    """``builtin``, or documents from a .txt/.md file, a .jsonl file (``text`` per line) or a folder of them."""
    if source == "builtin":
        return builtin_calibration_texts()
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"calibration text {source} does not exist; give a file, a folder or 'builtin'")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md", ".jsonl"))
        if not files:
            raise ValueError(f"calibration folder {path} has no .txt, .md or .jsonl files")
        return [t for f in files for t in read_calibration_texts(str(f))]
    if path.suffix == ".jsonl":
        texts = []
        for n, row in read_json_lines(path):
            if not isinstance(row.get("text"), str):
                raise ValueError(f"{path}:{n}: calibration .jsonl lines need a string 'text' field")
            texts.append(row["text"])
        return texts
    return [path.read_text(encoding="utf-8", errors="replace")]


def calibration_windows(texts: list[str], tokenizer: Any, samples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """``samples`` windows [samples, seq_len] cut at seeded random offsets from the documents joined by
    end-of-text; ValueError when the text is shorter than one window."""
    eos = getattr(tokenizer, "eos_id", None)
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer.encode(text))
        if eos is not None:
            ids.append(eos)
        if len(ids) >= 4 * samples * seq_len:  # plenty to choose from; tokenising more only costs time
            break
    if len(ids) < seq_len:
        raise ValueError(f"the calibration text has {len(ids)} tokens, fewer than one window of {seq_len} "
                         "(give more text or a smaller --seq-len)")
    rng = random.Random(seed)
    starts = [rng.randrange(0, len(ids) - seq_len + 1) for _ in range(samples)]
    return torch.tensor([ids[s : s + seq_len] for s in starts], dtype=torch.long)


def quantize_model(model_path: str | Path, fmt: QuantFormat, method: str, windows: torch.Tensor | None,
                   damp: float = 0.01, log=print):
    """A float checkpoint loaded in fp32 and quantised (``windows``: calibration ids for GPTQ); returns
    the packed model (Int4Linear / Int8Linear block linears, float head)."""
    model = load_model(model_path, dtype="fp32")
    if method == "gptq" and windows is None:
        raise ValueError("GPTQ needs calibration windows")
    results = calibrate(model, windows if windows is not None else torch.zeros(1, 1, dtype=torch.long), fmt,
                        method=method, damp=damp, log=log)
    return pack_model(model, results, head_int8=False)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..tokenizer import QwenTokenizer  # noqa: PLC0415

    if args.threads:
        torch.set_num_threads(args.threads)
    group_size = args.group_size or (32 if args.format == "gguf" else 128)
    fmt = QuantFormat(args.bits, group_size, symmetric=not args.asym)
    if args.format == "gguf":
        from .gguf_export import check_gguf_format  # noqa: PLC0415

        check_gguf_format(fmt)
    model_path = Path(args.model).expanduser()
    if not model_path.exists():
        raise FileNotFoundError(f"model {args.model} does not exist; pass a model folder or a .gguf file")
    tokenizer = QwenTokenizer.from_pretrained(Path(args.tokenizer or model_path).expanduser())
    started = time.perf_counter()
    windows = None
    if args.method == "gptq":
        texts = read_calibration_texts(args.calibration)
        windows = calibration_windows(texts, tokenizer, args.samples, args.seq_len, args.seed)
        print(f"quantize: {windows.shape[0]} calibration windows of {windows.shape[1]} tokens from {args.calibration}")
    model = quantize_model(model_path, fmt, args.method, windows, args.damp, log=lambda m: print(f"quantize: {m}"))
    out = Path(args.out).expanduser()
    extra = {"damp": args.damp, "calibration": args.calibration if windows is not None else None,
             "samples": args.samples if windows is not None else 0, "seq_len": args.seq_len, "seed": args.seed}
    if args.format == "gguf":
        from .gguf_export import write_gguf  # noqa: PLC0415

        out.mkdir(parents=True, exist_ok=True)
        written = write_gguf(model, out / "model.gguf", tokenizer, source=model_path)
    else:
        written = save_gptq(model, out, fmt, args.method, extra)
        tokenizer.save_pretrained(out)
    return {"out": str(written), "bits": fmt.bits, "group_size": fmt.groups_of(model.config.hidden_size),
            "symmetric": fmt.symmetric, "method": args.method, "format": args.format,
            "bits_per_weight": round(bits_per_weight(fmt), 3), "seconds": round(time.perf_counter() - started, 1)}
