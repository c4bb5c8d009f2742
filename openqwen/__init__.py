"""openqwen: the Qwen system (arXiv 2309.16609) in readable Python.

The layout follows the data: ``data`` -> ``tokenizer`` -> ``model`` (+ ``checkpoint``: loading and
saving) -> ``train`` -> ``infer`` / ``serve`` -> ``eval``. The main objects are importable from here,
loading included::

    import openqwen
    model = openqwen.load_model("path/to/Qwen2.5-0.5B-Instruct")   # or a .gguf file, a training output
    openqwen.save_model(model, "out/")
"""

from typing import TYPE_CHECKING

from .config import PRESETS, QwenConfig, get_preset

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports them on first use
    from .checkpoint import load_model, save_model
    from .model import KVCache, Qwen
    from .tokenizer import QwenTokenizer

__version__ = "0.1.0"

__all__ = ["PRESETS", "QwenConfig", "get_preset", "KVCache", "Qwen", "QwenTokenizer", "load_model", "save_model",
           "__version__"]


def __getattr__(name: str):
    # The model pulls in torch and the tokenizer tiktoken; both are imported on first use, so that
    # `import openqwen` (and `openqwen --help`) stays light.
    if name in ("Qwen", "KVCache"):
        from . import model

        return getattr(model, name)
    if name in ("load_model", "save_model"):
        from . import checkpoint

        return getattr(checkpoint, name)
    if name == "QwenTokenizer":
        from .tokenizer import QwenTokenizer

        return QwenTokenizer
    raise AttributeError(f"module 'openqwen' has no attribute {name!r}")
