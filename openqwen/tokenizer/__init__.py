"""Qwen's tokenizer: byte-level BPE on tiktoken, ChatML, vocabulary files, vocabulary training.

- :mod:`.bpe`: :class:`QwenTokenizer` (encode/decode with special-token safety, streaming decode);
- :mod:`.chat`: chat prompts (ChatML ids, history trimming to a window);
- :mod:`.train`: training and extending vocabularies, compression statistics;
- :mod:`.cli`: ``openqwen tokenizer train / stats / encode``.
"""

from .bpe import (
    CHAT_ROLES,
    DEFAULT_SYSTEM,
    ENDOFTEXT,
    IM_END,
    IM_START,
    QWEN_PATTERN,
    QwenTokenizer,
    StreamDecoder,
    TokenizerError,
    derive_merges,
    token_bytes_to_str,
    token_str_to_bytes,
)

__all__ = ["CHAT_ROLES", "DEFAULT_SYSTEM", "ENDOFTEXT", "IM_END", "IM_START", "QWEN_PATTERN", "QwenTokenizer",
           "StreamDecoder", "TokenizerError", "derive_merges", "token_bytes_to_str", "token_str_to_bytes"]
