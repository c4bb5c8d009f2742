"""``openqwen serve``: the OpenAI-compatible API and the web chat page for one model."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

from ..infer.loading import add_model_arguments, positive_int
from ..tokenizer.template import chat_template_from_flag  # --chat-template means the same for generate/chat

EXAMPLES = """\
examples:
  openqwen serve --model runs/demo/sft
  openqwen serve --model ~/.cache/openqwen-artifacts/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \\
      --dtype bf16 --port 8000 --api-key sk-local --served-model-name qwen-coder

  openqwen serve --model runs/demo/sft --max-queue 64 --request-timeout 120 --access-log \\
      --cors-origin https://my.app      # limits, JSON access logs, a browser app on another origin

  then open http://127.0.0.1:8000/ for the chat page, or use any OpenAI client:
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"model": "sft", "messages": [{"role": "user", "content": "Hello"}], "stream": true}'
  lm_eval --model local-completions --model_args model=sft,base_url=http://127.0.0.1:8000/v1/completions \\
      --tasks mmlu      # log-likelihoods through echo + logprobs, tokens through /tokenize

  SIGTERM drains: new requests get 503, running ones finish (up to --drain-timeout), then exit 0.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API with a web chat page",
        description="Serve a model over an OpenAI-compatible HTTP API (GET /v1/models, POST "
        "/v1/chat/completions, POST /v1/completions (echo, logprobs), POST /v1/embeddings, POST /tokenize "
        "and /detokenize, GET /health, GET /metrics for Prometheus; streaming with server-sent events) "
        "and a web chat page at /. Concurrent requests are batched together by the engine.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--api-key", default=os.environ.get("OPENQWEN_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 requests (default: $OPENQWEN_API_KEY, "
                   "none when unset)")
    p.add_argument("--served-model-name", default=None,
                   help="model id clients pass as 'model' (default: the --model file or folder name)")
    p.add_argument("--max-batch-size", type=positive_int, default=16,
                   help="most sequences decoded together (default 16); more requests wait in the queue")
    p.add_argument("--max-model-len", type=positive_int, default=None,
                   help="context window, prompt + completion (default: the model's)")
    p.add_argument("--default-max-tokens", type=positive_int, default=512,
                   help="completion length when a request sets no max_tokens (default 512, the release's "
                   "chat default)")
    p.add_argument("--chat-template", default="auto",
                   help="auto (default): the model's own jinja chat template when it has one (a GGUF's "
                   "tokenizer.chat_template, tokenizer_config.json), so tools reach it as it was trained, else "
                   "ChatML with tools in the ReAct format; chatml: always the built-in ChatML; or a .jinja file")
    p.add_argument("--max-body-bytes", type=positive_int, default=4 * 1024 * 1024,
                   help="largest request body in bytes (default 4 MiB); larger ones get 413")
    p.add_argument("--max-queue", type=nonnegative_int, default=256,
                   help="choices that may wait for a slot beyond the --max-batch-size running ones (default 256); "
                   "past it requests get 429 with Retry-After")
    p.add_argument("--request-timeout", type=positive_float, default=None,
                   help="seconds a request may take before it is stopped with 504 (default: no deadline)")
    p.add_argument("--max-prompts", type=positive_int, default=64,
                   help="most prompts per /v1/completions request and inputs per /v1/embeddings (default 64)")
    p.add_argument("--max-n", type=positive_int, default=16, help="most choices (n) per prompt (default 16)")
    p.add_argument("--cors-origin", action="append", default=[],
                   help="an origin browsers may call the API from (repeat for more; '*' for any; default: none, "
                   "no CORS headers)")
    p.add_argument("--access-log", action="store_true",
                   help="log one JSON line per request (id, path, status, tokens, time to first token, seconds)")
    p.add_argument("--embedding-pooling", choices=["mean", "last"], default="mean",
                   help="/v1/embeddings: mean of the last hidden states (default) or the last token's")
    p.add_argument("--drain-timeout", type=positive_float, default=30.0,
                   help="on SIGTERM, seconds running requests may take to finish before exit (default 30)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)


def nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ..infer.cli import load_engine_from_args
    from .app import ServerConfig, create_app
    from .drain import DrainingServer

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535 (0 picks a free one), got {args.port}")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"warning: listening on {args.host} without --api-key: anyone who can reach this port can use the "
              "model", file=sys.stderr)
    name = args.served_model_name or Path(args.model).expanduser().resolve().name.removesuffix(".gguf")
    print(f"loading {args.model} ...", file=sys.stderr, flush=True)
    kwargs = {"max_batch_size": args.max_batch_size}
    if args.max_model_len:
        kwargs["max_seq_len"] = args.max_model_len
    template = chat_template_from_flag(args.chat_template, args.model)
    engine = load_engine_from_args(args, chat_template=template, **kwargs)
    app = create_app(engine, ServerConfig(
        model_name=name, api_key=args.api_key, max_model_len=args.max_model_len,
        default_max_tokens=args.default_max_tokens, chat_template=template, max_body_bytes=args.max_body_bytes,
        max_queue=args.max_queue, request_timeout=args.request_timeout, max_prompts=args.max_prompts,
        max_n=args.max_n, cors_origins=tuple(args.cors_origin), access_log=args.access_log,
        embedding_pooling=args.embedding_pooling))
    if args.access_log:  # JSON lines on stderr, whatever --log-level says of uvicorn's own lines
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access = logging.getLogger("openqwen.serve.access")
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False
    print(f"chat template: {'the model' + chr(39) + 's own' if template is not None else 'built-in ChatML'}"
          f"{' (knows tools)' if template is not None and template.knows_tools else ' (tools as ReAct)'}",
          file=sys.stderr, flush=True)
    # Bind here so that --port 0 can report the port it got (tests and scripts read this line).
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        engine.close()
        raise ValueError(f"cannot listen on {args.host}:{args.port}: {e.strerror}; pick another --port or --host") \
            from None
    # Listen before the line below is printed: a client that reads it and connects at once queues in the
    # backlog until uvicorn starts accepting, instead of being refused (uvicorn listens again, harmlessly).
    sock.listen(2048)
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    server = DrainingServer(uvicorn.Config(app, log_level=args.log_level, access_log=not args.access_log),
                            app.state.server, args.drain_timeout)
    print(f"serving '{name}' on http://{host}:{port}/ (OpenAI base URL http://{host}:{port}/v1)",
          file=sys.stderr, flush=True)
    server.run(sockets=[sock])
    engine.close()
    return 0
