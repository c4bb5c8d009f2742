"""openqwen: the Qwen system (arXiv 2309.16609) in readable Python.

The layout follows the data: ``data`` -> ``tokenizer`` -> ``model`` -> ``train`` -> ``infer`` /
``serve`` -> ``agent`` -> ``eval``. The main objects are importable from here.
"""

from .config import PRESETS, QwenConfig, get_preset
from .model import KVCache, Qwen

__version__ = "0.1.0"

__all__ = ["PRESETS", "QwenConfig", "get_preset", "KVCache", "Qwen", "QwenTokenizer", "__version__"]


def __getattr__(name: str):
    # The tokenizer pulls in tiktoken; import it on first use so `import openqwen` stays light.
    if name == "QwenTokenizer":
        from .tokenizer import QwenTokenizer

        return QwenTokenizer
    raise AttributeError(f"module 'openqwen' has no attribute {name!r}")
