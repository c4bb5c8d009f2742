"""Checkpoint formats: read and write Qwen weights.

One call loads every supported format, recognised from the path (:func:`load_model`); one call
writes the Hugging Face Qwen2 layout (:func:`save_model`)::

    from openqwen.checkpoint import load_model, save_model
    model = load_model("path/to/Qwen2.5-0.5B-Instruct")      # or a first-generation folder, a .gguf file
    save_model(model, "out/")

The modules, one per job (imports run one way: ``load`` -> formats -> ``common`` -> ``errors``):

* :mod:`.load` -- :func:`load_model` (dispatch on the path) and :func:`save_model`;
* :mod:`.hf` -- the Qwen2 layout (``Qwen2ForCausalLM``): config.json both ways and the name map;
* :mod:`.v1` -- first-generation folders (``QWenLMHeadModel``);
* :mod:`.gguf` -- GGUF weights (dequantising) and metadata; :mod:`.gguf_file` -- the GGUF header
  reader, numpy only (the tokenizer reads GGUF vocabularies with it);
* :mod:`.common` -- the dtype vocabulary, the declarative :class:`~.common.NameMap`, safetensors
  reading and writing, :func:`~.common.build_model`; :mod:`.errors` -- :class:`CheckpointError`.

Importing this package imports no torch: names are looked up on first use, so
``import openqwen.checkpoint.gguf_file`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports them on first use
    from .common import DTYPES, build_model, resolve_dtype
    from .errors import CheckpointError
    from .gguf import dequantize, load_gguf
    from .gguf_file import GGUFFile
    from .hf import config_from_hf, config_to_hf, hf_state_from_model, transformers_config
    from .load import load_model, save_model
    from .v1 import load_v1, save_v1

__all__ = ["load_model", "save_model", "CheckpointError", "DTYPES", "resolve_dtype", "build_model",
           "config_from_hf", "config_to_hf", "hf_state_from_model", "transformers_config", "load_v1", "save_v1",
           "load_gguf", "dequantize", "GGUFFile"]


def __getattr__(name: str):
    if name in ("load_model", "save_model"):
        from . import load

        return getattr(load, name)
    if name == "CheckpointError":
        from .errors import CheckpointError

        return CheckpointError
    if name in ("DTYPES", "resolve_dtype", "build_model"):
        from . import common

        return getattr(common, name)
    if name in ("config_from_hf", "config_to_hf", "hf_state_from_model", "transformers_config"):
        from . import hf

        return getattr(hf, name)
    if name in ("load_v1", "save_v1"):
        from . import v1

        return getattr(v1, name)
    if name in ("load_gguf", "dequantize"):
        from . import gguf

        return getattr(gguf, name)
    if name == "GGUFFile":
        from .gguf_file import GGUFFile

        return GGUFFile
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
