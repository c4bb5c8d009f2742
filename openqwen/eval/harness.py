"""The evaluation harness: one entry point, :func:`run_eval`, for every task.

It loads a model and tokenizer (any checkpoint :func:`openqwen.load_model` reads: an
openqwen / Hugging Face Qwen2 folder, a first-generation folder, a ``.gguf`` file), runs the task,
and returns a JSON-ready result::

    {"task": "mmlu", "mode": "base", "shots": 5, "metrics": {"accuracy": 0.43, ...},
     "counts": {"total": 1140, "correct": 490, ...}, "settings": {...}, "wall_time_s": 812.3,
     "breakdown": {...per subject...}, "details": [...per item...]}

Every task runs through :class:`openqwen.infer.engine.Engine`: multiple choice and perplexity score
given tokens with ``Engine.score``; generation tasks (code, math) generate, batched.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import artifact_path
from ..infer.loading import load_model_and_tokenizer  # the loader (and dtype names) every verb shares
from .prompts import model_system_prompt, with_system

MC_TASKS = ("mmlu", "ceval", "cmmlu", "mc")
TASKS = MC_TASKS + ("humaneval", "mbpp", "gsm8k", "math401", "synthetic-math", "perplexity", "tools")

# The report's protocol for base models (Table 2 and the Code/Math sections); chat models: 0-shot.
BASE_SHOTS = {"mmlu": 5, "ceval": 5, "cmmlu": 5, "mc": 5, "humaneval": 0, "mbpp": 3, "gsm8k": 8, "math401": 0,
              "synthetic-math": 0}

_DEFAULT_DATA = {"mmlu": "mmlu-test", "humaneval": "humaneval", "perplexity": "shakespeare"}
_DATA_HELP = {
    "ceval": "a C-Eval CSV file or folder (id,question,A,B,C,D,answer)",
    "cmmlu": "a CMMLU CSV file or folder (Question,A,B,C,D,Answer)",
    "mc": "a .jsonl/.csv of four-way questions (question, answer_a..d, correct_answer, topic)",
    "mbpp": "an MBPP-shaped .jsonl (task_id, text, code, test_list), or 'builtin' for the project's own tasks",
    "gsm8k": "a GSM8K-shaped .jsonl (question, answer ending in '#### 42')",
    "mmlu": "the MMLU .jsonl (question, answer_a..d, correct_answer, topic)",
    "humaneval": "HumanEval.jsonl(.gz), or 'builtin' for the project's own tasks in HumanEval's shape",
    "perplexity": "a text file, .jsonl with 'text', .zip of texts, or a folder",
    "tools": "a .jsonl of tool cases (messages, tools, gold calls); default: the bundled benchmark",
    "synthetic-math": "the categories of the built-in held-out set to ask, e.g. add,sub,mul (default: all)",
}


@dataclass
class EvalConfig:
    """Settings of one evaluation run (the CLI flags of ``openqwen eval``)."""

    model: str
    task: str
    mode: str = "base"
    """``base``: raw-text prompts, k-shot; ``chat``: ChatML, 0-shot by default."""
    shots: int | None = None
    """Examples in the prompt; None: the report's protocol (BASE_SHOTS in base mode, 0 in chat)."""
    limit: int | None = None
    """Evaluate only the first N items (after shots are set aside)."""
    per_subject: int | None = None
    """Multiple choice: only the first N questions of each subject (a fixed, balanced subset)."""
    data: str | None = None
    """Task file; defaults to the fetched artifact where one exists (MMLU, HumanEval, Shakespeare)."""
    tokenizer: str | None = None
    """Tokenizer path when it is not with the model."""
    api_url: str | None = None
    """Generate through this OpenAI-compatible server (``http://host:8000/v1``) instead of in-process;
    ``model`` is then the served model's name and ``tokenizer`` its tokenizer (:mod:`openqwen.eval.api`)."""
    api_key: str | None = None
    """Bearer key for ``api_url`` (default: the ``OPENAI_API_KEY`` environment variable)."""
    system_prompt: str | None = None
    """Chat mode: the system message of every prompt. None: the model's own default, read from the
    chat template stored with it (Qwen2.5: "You are Qwen, created by Alibaba Cloud. You are a helpful
    assistant."), else the first generation's "You are a helpful assistant."."""
    dtype: str = "auto"
    """auto (default: the checkpoint's own precision, a q4_k_m GGUF as int4), fp32, bf16, int8 or int4: see
    :data:`openqwen.infer.loading.DTYPE_CHOICES`."""
    batch_size: int = 8
    samples: int = 1
    """Code: completions per problem (pass@k for every k in 1, 10, 100 up to this)."""
    temperature: float = 0.0
    """0 = greedy (the report's setting for pass@1 and math)."""
    top_p: float = 0.95
    max_new_tokens: int | None = None
    """None: 512 for code and word problems, 48 for arithmetic."""
    seed: int = 0
    context_lengths: list[int] = field(default_factory=lambda: [256, 512, 1024])
    """Perplexity: window lengths in tokens."""
    max_windows: int | None = 16
    long_context: dict[str, Any] = field(default_factory=dict)
    """Long-context overrides (the ``--rope-scaling/--logn/--window-sizes ...`` flags, see
    :func:`openqwen.infer.loading.apply_long_context`)."""
    """Perplexity: windows per context length (None: all the text)."""
    timeout_s: float = 10.0
    """Code: seconds per sandboxed test run."""
    sanitize: bool = True
    """Code, chat mode: keep only the imports, definitions and plain assignments of a reply, dropping
    its demo prints/asserts/input() (as evalplus, whose sanitizer the published Qwen2.5-Coder numbers
    use); False runs the extracted code block as it is."""
    memory_mb: int = 1024
    workers: int | None = None
    """Code: sandboxed runs in parallel (default: a few per core)."""
    progress: bool = True
    partial_path: str | None = None
    """Generation tasks append each finished chunk's completions here (JSON lines), so a long run
    that is stopped still leaves its work behind."""
    resume: bool = False
    """Reuse the completions already in ``partial_path`` and generate only the missing ones."""

    def resolved_shots(self) -> int:
        if self.shots is not None:
            return self.shots
        return BASE_SHOTS.get(self.task, 0) if self.mode == "base" else 0


def task_data_path(task: str, data: str | None) -> Path:
    """The file a task reads: ``data`` if given, else the task's fetched artifact."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    if data:
        p = Path(data).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"--data {p} does not exist ({task} expects {_DATA_HELP.get(task, 'a file')})")
        return p
    if task in _DEFAULT_DATA:
        p = artifact_path(_DEFAULT_DATA[task])
        if p is None:
            raise FileNotFoundError(
                f"task {task} defaults to the {_DEFAULT_DATA[task]!r} artifact, which is not fetched: run "
                f"../shared/tools/fetch-artifacts or pass --data ({_DATA_HELP[task]})")
        return p
    raise ValueError(f"task {task} needs --data: {_DATA_HELP.get(task, 'a task file')}")


# ------------------------------------------------------------------------------------ generation
def generate(model: Any, tokenizer: Any, prompts: list[list[int]], cfg: EvalConfig, *, chat: bool,
             stop: list[str] | None = None, max_new_tokens: int = 512) -> list[Any]:
    """Completions for token-id prompts through the inference engine (batched), or through the
    OpenAI-compatible server at ``cfg.api_url``."""
    if cfg.api_url:
        from .api import api_generate  # noqa: PLC0415

        return api_generate(cfg.api_url, cfg.model, tokenizer, prompts, chat=chat, stop=list(stop or []),
                            max_new_tokens=max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            seed=cfg.seed, concurrency=cfg.batch_size, api_key=cfg.api_key)
    from ..infer.engine import Engine  # noqa: PLC0415
    from ..infer.sampling import SamplingParams  # noqa: PLC0415

    stop_ids = list(tokenizer.stop_ids) if chat else [tokenizer.eos_id]
    greedy = cfg.temperature <= 0
    params = [SamplingParams(max_new_tokens=max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                             stop=list(stop or []), stop_token_ids=stop_ids, greedy=greedy,
                             seed=None if greedy else cfg.seed + i) for i in range(len(prompts))]
    # KV cache sized to the longest request, not the engine's 8K default (16 rows x 8K of a 0.5B
    # model's cache is 3 GB of memory that a benchmark never touches)
    longest = max(len(p) for p in prompts) + max_new_tokens + 1
    engine = Engine(model, tokenizer, max_batch_size=cfg.batch_size,
                    max_seq_len=min(longest, model.config.max_position_embeddings))
    done = _load_partial(cfg.partial_path, prompts) if cfg.resume else {}
    todo = [i for i in range(len(prompts)) if i not in done]
    # Chunks of a few batches: continuous batching inside each, and a partial file after each.
    chunk = max(2 * cfg.batch_size, 16)
    bar = None
    if cfg.progress and len(todo) > chunk:
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=len(prompts), initial=len(done), desc="generating", unit="req")
    try:
        for s in range(0, len(todo), chunk):
            idx = todo[s : s + chunk]
            comps = engine.generate([prompts[i] for i in idx], [params[i] for i in idx],
                                    progress=cfg.progress and bar is None)
            for i, c in zip(idx, comps):
                done[i] = c
            if cfg.partial_path:
                with open(cfg.partial_path, "a", encoding="utf-8") as f:
                    for i, c in zip(idx, comps):
                        f.write(json.dumps({"index": i, "prompt_tokens": len(prompts[i]), "text": c.text,
                                            "finish_reason": c.finish_reason,
                                            "completion_tokens": c.completion_tokens}) + "\n")
            if bar is not None:
                bar.update(len(comps))
    finally:
        engine.close()
        if bar is not None:
            bar.close()
    return [done[i] for i in range(len(prompts))]


@dataclass
class SavedCompletion:
    """A completion read back from a partial file (what the scorers use of a Completion)."""

    text: str
    finish_reason: str
    completion_tokens: int
    prompt_tokens: int = 0


def _load_partial(path: str | None, prompts: list[list[int]]) -> dict[int, Any]:
    """Completions of an earlier, interrupted run of the same task (``--resume``)."""
    if not path or not Path(path).exists():
        return {}
    done: dict[int, Any] = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short when the earlier run was killed
        i = int(r["index"])
        if i >= len(prompts) or r.get("prompt_tokens", len(prompts[i])) != len(prompts[i]):
            raise ValueError(f"{path}:{n + 1} does not belong to this run (other task, limit or prompts); "
                             "delete it or run without --resume")
        done[i] = SavedCompletion(r["text"], r["finish_reason"], r["completion_tokens"], len(prompts[i]))
    return done


def _chat_ids(tok: Any, messages: list[dict], model: Any, max_new_tokens: int, cfg: EvalConfig) -> list[int]:
    """ChatML prompt ids through the package's one chat-prompt path (the server and the chat CLI use
    it too), with the run's system prompt first: history trimmed oldest turn first to leave
    ``max_new_tokens`` of the model's context."""
    from ..tokenizer.chat import chat_prompt_ids  # noqa: PLC0415

    return chat_prompt_ids(tok, with_system(messages, cfg.system_prompt),
                           max(1, model.config.max_position_embeddings - max_new_tokens))


def _truncate_at_stop(text: str, stop: list[str]) -> str:
    for s in stop:
        i = text.find(s)
        if i != -1:
            text = text[:i]
    return text


# ------------------------------------------------------------------------------------ task runners
def _run_mc(model, tok, cfg: EvalConfig) -> dict[str, Any]:
    from .tasks import multiple_choice as mc  # noqa: PLC0415

    items, junk = mc.load_mc(task_data_path(cfg.task, cfg.data))
    shots = cfg.resolved_shots()
    examples, rest = mc.split_shots(items, shots)
    subset = mc.select(rest, cfg.limit, cfg.per_subject)
    if not subset:
        raise ValueError("no questions left to evaluate (check --limit / --per-subject / --shots)")
    res = mc.evaluate_mc(_scoring_engine(model, tok), subset, shots, cfg.mode, cfg.batch_size, examples,
                         cfg.progress, system=cfg.system_prompt)
    res["counts"]["dropped_header_rows"] = junk
    return res


def _scoring_engine(model, tok, max_seq_len: int | None = None):
    """An engine that only scores: no background thread, and no generation KV cache is ever allocated."""
    from ..infer.engine import Engine  # noqa: PLC0415

    return Engine(model, tok, max_batch_size=1, max_seq_len=max_seq_len, background=False)


def _run_code(model, tok, cfg: EvalConfig) -> dict[str, Any]:
    from .passk import pass_at_k  # noqa: PLC0415
    from .sandbox import run_many  # noqa: PLC0415
    from .tasks import code  # noqa: PLC0415

    shots = cfg.resolved_shots()
    if cfg.task == "mbpp" and cfg.data == "builtin":
        problems = code.builtin_mbpp(shots, cfg.seed)
    elif cfg.task == "humaneval" and cfg.data == "builtin":
        problems = code.builtin_humaneval(cfg.seed)
    else:
        path = task_data_path(cfg.task, cfg.data)
        problems = code.load_humaneval(path) if cfg.task == "humaneval" else code.load_mbpp(path, shots)
    problems = problems[: cfg.limit] if cfg.limit is not None else problems
    n = cfg.samples
    if cfg.temperature <= 0 and n > 1:
        raise ValueError("--samples > 1 needs --temperature > 0 (greedy decoding repeats one completion)")
    chat = cfg.mode == "chat"
    if chat:
        prefix = tok.encode(code.CHAT_RESPONSE_PREFIX)
        max_new = cfg.max_new_tokens or 512
        prompts = [_chat_ids(tok, [{"role": "user", "content": p.instruction}], model, max_new + len(prefix), cfg)
                   + prefix for p in problems]
        stop = code.CHAT_STOP
    else:
        prompts = [tok.encode(p.prompt) for p in problems]
        stop = ["[DONE]"] if cfg.task == "mbpp" else code.BASE_STOP
    prompts = [ids for ids in prompts for _ in range(n)]
    comps = generate(model, tok, prompts, cfg, chat=chat, stop=stop, max_new_tokens=cfg.max_new_tokens or 512)
    programs = [code.build_program(problems[i // n], c.text, cfg.mode, cfg.sanitize) for i, c in enumerate(comps)]
    runs = run_many(programs, cfg.timeout_s, cfg.memory_mb, workers=cfg.workers, progress=cfg.progress,
                    desc="running tests")
    details, correct_per_problem = [], []
    for j, p in enumerate(problems):
        mine = runs[j * n : (j + 1) * n]
        c = sum(r.passed for r in mine)
        correct_per_problem.append(c)
        details.append({"task_id": p.task_id, "passed": c, "samples": n,
                        "completion": comps[j * n].text, "result": mine[0].status, "reason": mine[0].reason,
                        "finish_reason": comps[j * n].finish_reason})
    ks = [k for k in (1, 10, 100) if k <= n]
    metrics = {f"pass@{k}": sum(pass_at_k(n, c, k) for c in correct_per_problem) / len(problems) for k in ks}
    return {"metrics": metrics,
            "counts": {"total": len(problems), "samples_per_problem": n,
                       "problems_solved": sum(c > 0 for c in correct_per_problem),
                       "generated_tokens": sum(c.completion_tokens for c in comps)},
            "sandbox": runs[0].enforced if runs else {}, "details": details}


def _run_math(model, tok, cfg: EvalConfig) -> dict[str, Any]:
    from .tasks import math as m  # noqa: PLC0415

    chat = cfg.mode == "chat"
    shots = cfg.resolved_shots()
    if cfg.task == "gsm8k":
        problems = m.load_gsm8k(task_data_path("gsm8k", cfg.data))
        examples, problems = problems[:shots], problems[shots:]
        rel_tol, max_new = 1e-4, cfg.max_new_tokens or 512
        if chat:
            prompts = [_chat_ids(tok, m.gsm8k_chat_messages(p), model, max_new, cfg) for p in problems[: cfg.limit]]
        else:
            prompts = [tok.encode(m.gsm8k_base_prompt(p, examples)) for p in problems[: cfg.limit]]
        stop = [] if chat else ["\n\nQuestion:", "Question:"]
    elif cfg.task == "synthetic-math":
        # the built-in held-out split, asked as the SFT data asks (the question alone as the user turn)
        problems = m.synthetic_math_problems(cfg.limit or 360, seed=cfg.seed, categories=cfg.data)
        examples = m.synthetic_math_problems(shots, seed=cfg.seed, split="train", categories=cfg.data) if shots else []
        rel_tol, max_new = 1e-4, cfg.max_new_tokens or 128
        if chat:
            prompts = [_chat_ids(tok, [{"role": "user", "content": p.question}], model, max_new, cfg) for p in problems]
        else:
            prompts = [tok.encode(m.gsm8k_base_prompt(p, examples)) for p in problems]
        stop = [] if chat else ["\n\nQuestion:", "Question:"]
    else:
        problems = m.generate_math401(seed=cfg.seed)
        rel_tol, max_new = 1e-3, cfg.max_new_tokens or 48  # Math401 counts answers within 1e-3
        examples = m.generate_math401(shots, seed=cfg.seed + 10_000) if shots else []
        ex = "".join(f"{e.question}{_fmt(e.answer)}\n" for e in examples)
        if chat:
            prompts = [_chat_ids(tok, m.math401_chat_messages(p), model, max_new, cfg) for p in problems[: cfg.limit]]
        else:
            prompts = [tok.encode(ex + p.question) for p in problems[: cfg.limit]]
        stop = [] if chat else ["\n"]
    problems = problems[: cfg.limit]
    comps = generate(model, tok, prompts, cfg, chat=chat, stop=stop, max_new_tokens=max_new)
    res = m.score_math(problems, [_truncate_at_stop(c.text, stop) for c in comps], rel_tol)
    res["counts"]["generated_tokens"] = sum(c.completion_tokens for c in comps)
    return res


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.4f}"


def _run_perplexity(model, tok, cfg: EvalConfig) -> dict[str, Any]:
    from .tasks.perplexity import perplexity, read_texts  # noqa: PLC0415

    texts = read_texts(task_data_path("perplexity", cfg.data))
    ids: list[int] = []
    for t in texts:  # documents joined by <|endoftext|>, as in pretraining
        ids += tok.encode(t) + [tok.eos_id]
    engine = _scoring_engine(model, tok, max_seq_len=max(cfg.context_lengths))
    rows = {str(L): perplexity(engine, ids, L, cfg.max_windows, cfg.progress) for L in cfg.context_lengths}
    first = rows[str(cfg.context_lengths[0])]
    return {"metrics": {"perplexity": first["perplexity"],
                        **{f"perplexity@{L}": r["perplexity"] for L, r in rows.items()}},
            "counts": {"total_tokens": len(ids), "documents": len(texts)}, "breakdown": rows}


def _run_tools(model, tok, cfg: EvalConfig) -> dict[str, Any]:
    from .tasks.tools import run_tools  # noqa: PLC0415

    return run_tools(model, tok, cfg)


_RUNNERS = {**{t: _run_mc for t in MC_TASKS}, "humaneval": _run_code, "mbpp": _run_code,
            "gsm8k": _run_math, "math401": _run_math, "synthetic-math": _run_math, "perplexity": _run_perplexity,
            "tools": _run_tools}


def _api_model_and_tokenizer(cfg: EvalConfig, tokenizer: Any) -> tuple[Any, Any]:
    """``--api``: no local model; the tokenizer (prompts are built here, as token ids) from
    ``--tokenizer``, else from ``--model`` when that names a local path."""
    from .api import API_TASKS, api_model  # noqa: PLC0415

    if cfg.task not in API_TASKS:
        raise ValueError(f"--api runs the generation tasks ({', '.join(API_TASKS)}); {cfg.task} scores "
                         "log-probabilities of given tokens, which needs the model in-process")
    if tokenizer is None:
        from ..tokenizer import QwenTokenizer  # noqa: PLC0415

        path = cfg.tokenizer or (cfg.model if Path(cfg.model).expanduser().exists() else None)
        if path is None:
            raise ValueError("--api needs the served model's tokenizer to build the prompts: pass --tokenizer "
                             "(a tokenizer file or model folder)")
        tokenizer = QwenTokenizer.from_pretrained(Path(path).expanduser())
    return api_model(), tokenizer


def run_eval(cfg: EvalConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Run one task; load the model from ``cfg.model`` unless ``model``/``tokenizer`` are given."""
    if cfg.task not in TASKS:
        raise ValueError(f"unknown task {cfg.task!r}; choose one of: {', '.join(TASKS)}")
    if cfg.mode not in ("base", "chat"):
        raise ValueError(f"--mode must be base or chat, got {cfg.mode!r}")
    builtin = cfg.task in ("math401", "synthetic-math", "tools") or (
        cfg.task in ("mbpp", "humaneval") and cfg.data == "builtin")
    if not builtin:  # generated or bundled, no file needed
        task_data_path(cfg.task, cfg.data)  # a missing task file is reported before the (slow) model load
    t0 = time.perf_counter()
    if cfg.api_url:
        model, tokenizer = _api_model_and_tokenizer(cfg, tokenizer)
    elif model is None or tokenizer is None:
        m, t = load_model_and_tokenizer(cfg.model, cfg.dtype, cfg.tokenizer, cfg.long_context)
        model, tokenizer = model or m, tokenizer or t
    load_s = time.perf_counter() - t0
    if cfg.mode == "chat" and cfg.system_prompt is None:  # the model's own default, recorded in settings
        cfg = dataclasses.replace(cfg, system_prompt=model_system_prompt(cfg.tokenizer or cfg.model))
    res = _RUNNERS[cfg.task](model, tokenizer, cfg)
    from .. import __version__  # noqa: PLC0415

    return {
        "task": cfg.task, "model": cfg.model, "mode": cfg.mode, "shots": cfg.resolved_shots(),
        "metrics": res["metrics"], "counts": res["counts"],
        "settings": dataclasses.asdict(cfg),
        "wall_time_s": round(time.perf_counter() - t0, 2), "load_time_s": round(load_s, 2),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "openqwen_version": __version__,
        **{k: res[k] for k in ("breakdown", "sandbox") if k in res},
        "details": res.get("details", []),
    }


def markdown_table(result: dict[str, Any]) -> str:
    """A one-table markdown summary of a result (metrics as rows)."""
    c = result["counts"]
    n = c.get("total", c.get("total_tokens", ""))
    lines = [f"| model | task | mode | shots | n | metric | value | wall time |",
             "|---|---|---|---:|---:|---|---:|---:|"]
    for name, v in result["metrics"].items():
        shown = f"{v:.2f}" if name.startswith("perplexity") else f"{100 * v:.2f}"
        lines.append(f"| {Path(result['model']).name} | {result['task']} | {result['mode']} | {result['shots']} | "
                     f"{n} | {name}{'' if name.startswith('perplexity') else ' (%)'} | {shown} | "
                     f"{result['wall_time_s']:.0f} s |")
    return "\n".join(lines) + "\n"


def write_result(result: dict[str, Any], output: str | Path) -> tuple[Path, Path]:
    """Write ``output`` (JSON) and the markdown table next to it (same name, ``.md``)."""
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    md = out.with_suffix(".md")
    md.write_text(markdown_table(result))
    return out, md
