"""Qwen's tokenizer: byte-level BPE on tiktoken, ChatML, vocabulary files, vocabulary training.

Modules, each importing only those above it (no cycles):

- :mod:`.vocab`: what a vocabulary is made of (:class:`Vocabulary`, split regexes, special-token
  names, GPT-2 byte-to-unicode spelling, :class:`TokenizerError`);
- :mod:`.formats`: vocabulary files in and out (``qwen.tiktoken``, ``tokenizer.json``,
  ``vocab.json`` + ``merges.txt``, ``tokenizer_config.json``, GGUF) and finding them in a folder;
- :mod:`.react`: the first generation's ReAct tool prompt and :func:`~.react.parse_react`;
- :mod:`.chat`: ChatML rendering with the SFT assistant mask, message validation, history trimming
  (:func:`chat_prompt_ids`, also with ``tools=`` and the model's own ``template=``), the Jinja chat template;
- :mod:`.template`: :class:`~.template.ChatTemplate`, the model's own jinja template rendered as
  transformers renders it, encoded so that message text never becomes special ids;
- :mod:`.bpe`: :class:`QwenTokenizer` (encode/decode with special-token safety, streaming decode),
  built from a :class:`Vocabulary`;
- :mod:`.train`: training and extending vocabularies, compression statistics;
- :mod:`.cli`: ``openqwen tokenizer train / stats / encode``.
"""

from .bpe import QwenTokenizer, StreamDecoder
from .chat import CHAT_ROLES, DEFAULT_CHAT_WINDOW, DEFAULT_SYSTEM, ChatWindowError, chat_prompt_ids, render_chatml
from .formats import derive_merges, load_tiktoken_ranks, read_vocabulary, write_tiktoken_ranks
from .vocab import (
    ENDOFTEXT,
    IM_END,
    IM_START,
    QWEN_PATTERN,
    TokenizerError,
    Vocabulary,
    bytes_to_unicode,
    first_gen_special_tokens,
    token_bytes_to_str,
    token_str_to_bytes,
)

__all__ = ["CHAT_ROLES", "ChatWindowError", "DEFAULT_CHAT_WINDOW", "DEFAULT_SYSTEM", "ENDOFTEXT", "IM_END", "IM_START", "QWEN_PATTERN",
           "QwenTokenizer", "StreamDecoder", "TokenizerError", "Vocabulary", "bytes_to_unicode", "chat_prompt_ids",
           "derive_merges", "first_gen_special_tokens", "load_tiktoken_ranks", "read_vocabulary", "render_chatml",
           "token_bytes_to_str", "token_str_to_bytes", "write_tiktoken_ranks"]
