"""Constrained decoding: a tool call that must start now and whose arguments follow a JSON schema.

``tool_choice: "required"`` or a named function is honoured by masking the logits, not by hoping:
:func:`tool_call_constraint` returns a :attr:`~openqwen.infer.sampling.SamplingParams.constraint`
factory whose constraint lets through, at every step, only the tokens that keep the output on a
path to a complete call: the call's opening (``<tool_call>\\n{"name": "`` in Qwen2.5's format, or
``Action: `` in the first generation's ReAct format), one of the allowed function names, then the
arguments as JSON built from the function's parameter schema, the closing, and a stop token. The
model still chooses everything the schema leaves open (string contents, numbers, which optional
properties to give, how many array items), by its own probabilities among the allowed tokens.

The schema is walked as a sequence of segments: literal choices (keys, separators, ``true``,
``enum`` values, special tokens such as ``<tool_call>``), free strings and numbers. The mask of a
literal choice is built from the prefixes of what is left of each option (a dict lookup per prefix);
a free string allows a precomputed mask of the vocabulary's tokens that can sit inside a JSON
string, plus the closing quote; a number allows the digit tokens a number can continue with, and
once it is complete the tokens that start what follows it.

JSON Schema supported: ``type`` object (``properties``, ``required``; keys written in the schema's
order, optional ones left to the model), string (``enum``, ``minLength``, ``maxLength``), number,
integer, boolean, null, array (``items``, ``minItems``, ``maxItems``), ``enum`` of any JSON values,
nested objects and arrays; ``type`` lists take their first non-null type and ``anyOf``/``oneOf``
their first branch; BFCL's ``dict``/``float``/``tuple`` type names are read as object/number/array.
Not supported (not enforced): ``pattern``, ``format``, ``minimum``/``maximum``/``multipleOf``,
``additionalProperties`` (never any extra keys), ``allOf``, ``$ref``, ``const``, ``uniqueItems``,
an object without ``properties`` (always ``{}``). Strings never contain ``"``, ``\\`` or control
characters (no escapes), are at most :data:`MAX_STRING` characters unless ``maxLength`` says fewer,
numbers at most 12 integer and 6 fraction digits, arrays at most :data:`MAX_ITEMS` items.
"""

from __future__ import annotations

import json
import re
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

MAX_STRING = 200
MAX_ITEMS = 8

_TYPE_ALIASES = {"dict": "object", "float": "number", "tuple": "array", "list": "array", "int": "integer",
                 "str": "string", "bool": "boolean"}
_NUMBER_CHARS = set("-0123456789.")
_INT_PREFIX = re.compile(r"-?(0|[1-9]\d{0,11})?")
_INT_DONE = re.compile(r"-?(0|[1-9]\d*)")
_NUM_PREFIX = re.compile(r"-?((0|[1-9]\d{0,11})(\.\d{0,6})?)?")
_NUM_DONE = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?")


# ------------------------------------------------------------------------------ the vocabulary
class VocabularyIndex:
    """What masks are built from, computed once per tokenizer (``mergeable_ranks`` and
    ``special_tokens``): each ordinary token's text (tokens that are not valid UTF-8 on their own are
    left out), text -> id, the special tokens, the tokens that may sit inside a JSON string (no
    quote, backslash or control character), the tokens made of number characters."""

    def __init__(self, tokenizer: Any) -> None:
        self.size = int(tokenizer.vocab_size)
        self.special: dict[str, int] = dict(tokenizer.special_tokens)
        self.text_to_id: dict[str, int] = {}
        self.number_tokens: list[tuple[int, str]] = []
        unsafe = re.compile(rb'["\\\x00-\x1f]')
        safe_ids, safe_lengths = [], []
        for raw, i in sorted(tokenizer.mergeable_ranks.items(), key=lambda kv: kv[1]):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                continue
            self.text_to_id.setdefault(text, i)
            if not unsafe.search(raw):
                safe_ids.append(i)
                safe_lengths.append(len(text))
            if set(text) <= _NUMBER_CHARS:
                self.number_tokens.append((i, text))
        self.string_safe = torch.zeros(self.size, dtype=torch.bool)
        self.string_safe[torch.tensor(safe_ids, dtype=torch.long)] = True
        # characters of each in-string token (a huge number elsewhere), for maxLength
        self.string_lengths = torch.full((self.size,), 1 << 30, dtype=torch.long)
        self.string_lengths[torch.tensor(safe_ids, dtype=torch.long)] = torch.tensor(safe_lengths, dtype=torch.long)
        self.quote = self.text_to_id['"']
        self.id_text = {i: t for t, i in self.text_to_id.items()} | {i: t for t, i in self.special.items()}

    def prefixes(self, text: str) -> list[int]:
        """Ids of the tokens whose text is a non-empty prefix of ``text``."""
        return [i for i in (self.text_to_id.get(text[:k]) for k in range(1, len(text) + 1)) if i is not None]


_INDEXES: "weakref.WeakKeyDictionary[Any, VocabularyIndex]" = weakref.WeakKeyDictionary()


def vocabulary_index(tokenizer: Any) -> VocabularyIndex:
    """The (cached) :class:`VocabularyIndex` of ``tokenizer``."""
    index = _INDEXES.get(tokenizer)
    if index is None:
        index = _INDEXES[tokenizer] = VocabularyIndex(tokenizer)
    return index


# ------------------------------------------------------------------------------ segments
@dataclass
class Choice:
    """One of ``options`` (literal text), written by one or more tokens."""

    options: list[str]
    so_far: str = ""


@dataclass
class Special:
    token_id: int


@dataclass
class FreeString:
    """The inside of a JSON string and its closing quote."""

    min_chars: int = 0
    max_chars: int = MAX_STRING
    chars: int = 0


@dataclass
class Number:
    """A JSON number (``integer``: no fraction); ``follow``: the options of the choice after it."""

    integer: bool
    follow: list[str]
    text: str = ""


Segment = Choice | Special | FreeString | Number
Walk = Iterator[Segment]  # a generator of segments; a Choice's generator is sent the option taken


def _normalise(schema: Any) -> dict:
    if not isinstance(schema, dict):
        return {"type": "string"}
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            merged = {k: v for k, v in schema.items() if k != key}
            return _normalise({**merged, **schema[key][0]})
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), "null")
    t = _TYPE_ALIASES.get(t, t)
    if t is None:
        t = "object" if "properties" in schema else "array" if "items" in schema else "string"
    return {**schema, "type": t}


def _first_options(schema: dict) -> list[str]:
    """The literal starts a value of ``schema`` can have (an array's item-or-close choice)."""
    s = _normalise(schema)
    if "enum" in s:
        return [json.dumps(v, ensure_ascii=False) for v in s["enum"]]
    return {"string": ['"'], "object": ["{"], "array": ["["], "boolean": ["true", "false"], "null": ["null"],
            "integer": list("-0123456789"), "number": list("-0123456789")}.get(s["type"], ['"'])


def _value(schema: Any, follow: list[str], started: str = "") -> Walk:
    """Segments of one value of ``schema``; ``started``: the literal start already written (an
    option of :func:`_first_options`)."""
    s = _normalise(schema)
    t = s["type"]
    if "enum" in s:
        if not started:
            yield Choice([json.dumps(v, ensure_ascii=False) for v in s["enum"]])
    elif t == "string":
        if not started:
            yield Choice(['"'])
        yield FreeString(int(s.get("minLength", 0)), min(int(s.get("maxLength", MAX_STRING)), MAX_STRING))
    elif t in ("integer", "number"):
        yield Number(t == "integer", follow, started)
    elif t == "boolean":
        if not started:
            yield Choice(["true", "false"])
    elif t == "null":
        if not started:
            yield Choice(["null"])
    elif t == "array":
        yield from _array(s, follow, started)
    else:
        yield from _object(s, started)


def _array(s: dict, follow: list[str], started: str) -> Walk:
    if not started:
        yield Choice(["["])
    item = s.get("items", {"type": "string"})
    least = int(s.get("minItems", 0))
    most = max(min(int(s.get("maxItems", MAX_ITEMS)), MAX_ITEMS), least, 1)
    n = 0
    while True:
        after = ([", "] if n + 1 < most else []) + (["]"] if n + 1 >= least else [])
        if n == 0:
            options = (["]"] if least == 0 else []) + _first_options(item)
            taken = yield Choice(options)
            if taken == "]":
                return
            yield from _value(item, after, taken)
        else:
            yield from _value(item, after)
        n += 1
        taken = yield Choice(after)
        if taken == "]":
            return


def _object(s: dict, started: str) -> Walk:
    if not started:
        yield Choice(["{"])
    properties = s.get("properties") if isinstance(s.get("properties"), dict) else {}
    required = [k for k in s.get("required", []) if k in properties]
    left = list(properties)
    given: set[str] = set()

    def options() -> list[str]:
        lead = ", " if given else ""
        return ([lead + json.dumps(k, ensure_ascii=False) + ": " for k in left]
                + (["}"] if set(required) <= given else []))

    taken = yield Choice(options())
    while taken != "}":
        key = json.loads(taken.removeprefix(", ").removesuffix(": "))
        left.remove(key)
        given.add(key)
        after = options()
        yield from _value(properties[key], after)
        taken = yield Choice(after)


# ------------------------------------------------------------------------------ the constraint
class SchemaConstraint:
    """Follows a segment walk over the generated tokens and masks the logits to what continues it;
    once the walk is over only ``stop_ids`` are allowed. One per request (it keeps state)."""

    def __init__(self, index: VocabularyIndex, walk: Walk, stop_ids: Sequence[int]) -> None:
        self.index = index
        self.walk = walk
        self.stop_ids = list(stop_ids)
        self.segment: Segment | None = next(walk)
        self.consumed = 0
        self._masks: dict[int, torch.Tensor] = {}

    def _advance(self, taken: str | None = None) -> None:
        try:
            self.segment = self.walk.send(taken)
        except StopIteration:
            self.segment = None

    def _feed(self, text: str) -> None:
        seg = self.segment
        if isinstance(seg, Choice):
            seg.so_far += text
            if seg.so_far in seg.options:
                self._advance(seg.so_far)
        elif isinstance(seg, FreeString):
            if text == '"':
                self._advance()
            else:
                seg.chars += len(text)
        elif isinstance(seg, Number):
            if any(f.startswith(text) for f in seg.follow) and not set(text) <= _NUMBER_CHARS:
                self._advance()
                self._feed(text)
            else:
                seg.text += text
        elif isinstance(seg, Special):
            self._advance()

    def feed_token(self, token: int) -> None:
        """Follow one generated token (the mask allowed it, so it continues the walk)."""
        if isinstance(self.segment, Special):
            self._advance()
            return
        text = self.index.id_text.get(token)
        if text is None:
            raise ValueError(f"token {token} was generated outside the constraint")
        self._feed(text)

    def allowed(self) -> list[int] | torch.Tensor:
        """The ids allowed next: a list, or a bool mask over the vocabulary (free strings)."""
        seg, index = self.segment, self.index
        if seg is None:
            return self.stop_ids
        if isinstance(seg, Special):
            return [seg.token_id]
        if isinstance(seg, Choice):
            ids: set[int] = set()
            for option in seg.options:
                if option.startswith(seg.so_far):
                    ids.update(index.prefixes(option[len(seg.so_far):]))
            return sorted(ids)
        if isinstance(seg, FreeString):
            if seg.chars >= seg.max_chars:
                return [index.quote]
            fits = index.string_lengths <= seg.max_chars - seg.chars  # never past maxLength
            if seg.chars < seg.min_chars:
                return fits
            fits[index.quote] = True
            return fits
        prefix, done = (_INT_PREFIX, _INT_DONE) if seg.integer else (_NUM_PREFIX, _NUM_DONE)
        ids = {i for i, t in index.number_tokens if prefix.fullmatch(seg.text + t)}
        if done.fullmatch(seg.text):
            for f in seg.follow:
                ids.update(index.prefixes(f))
        return sorted(ids)

    def __call__(self, generated: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        for token in generated[self.consumed:]:
            self.feed_token(int(token))
        self.consumed = len(generated)
        allowed = self.allowed()
        out = torch.full_like(logits, float("-inf"))
        if isinstance(allowed, torch.Tensor):
            n = min(len(allowed), logits.shape[-1])
            keep = allowed[:n].to(logits.device)  # (a no-op on the CPU)
            out[:n] = torch.where(keep, logits[:n], out[:n])
        else:
            idx = torch.tensor([i for i in allowed if i < logits.shape[-1]], dtype=torch.long, device=logits.device)
            out[idx] = logits[idx]
        return out


def _literal(index: VocabularyIndex, text: str) -> Walk:
    """``text`` as segments: its special tokens as :class:`Special`, the rest as one-option choices."""
    if not text:
        return
    names = sorted(index.special, key=len, reverse=True)
    pattern = re.compile("(" + "|".join(re.escape(n) for n in names) + ")") if names else None
    pieces = pattern.split(text) if pattern else [text]
    for k, piece in enumerate(pieces):
        if k % 2:
            yield Special(index.special[piece])
        elif piece:
            yield Choice([piece])


def _call_walk(index: VocabularyIndex, functions: list[dict], style: str) -> Walk:
    by_name = {f["name"]: f for f in functions}
    if style == "react":
        head, between, tail = "Action: ", "\nAction Input: ", "\n"
    else:
        head, between, tail = '<tool_call>\n{"name": "', '", "arguments": ', "}\n</tool_call>"
    yield from _literal(index, head)
    taken = yield Choice([name + between for name in by_name])
    name = taken[: len(taken) - len(between)]
    schema = by_name[name].get("parameters") or {"type": "object", "properties": {}}
    schema = _normalise(schema)
    if schema["type"] != "object":
        schema = {"type": "object", "properties": {}}
    yield from _object(schema, "")
    yield from _literal(index, tail)


@dataclass
class ToolCallConstraintFactory:
    """A :attr:`SamplingParams.constraint` factory: each call makes a fresh :class:`SchemaConstraint`."""

    tokenizer: Any
    functions: list[dict]
    stop_ids: list[int]
    style: str = "hermes"
    index: VocabularyIndex = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.style not in ("hermes", "react"):
            raise ValueError(f"style must be 'hermes' (Qwen2.5's <tool_call>) or 'react', got {self.style!r}")
        if not self.functions:
            raise ValueError("a tool-call constraint needs at least one function")
        if not self.stop_ids:
            raise ValueError("a tool-call constraint needs a stop token id to end on")
        self.index = vocabulary_index(self.tokenizer)

    def __call__(self) -> SchemaConstraint:
        return SchemaConstraint(self.index, _call_walk(self.index, self.functions, self.style), self.stop_ids)


def tool_call_constraint(tokenizer: Any, functions: Sequence[dict], stop_ids: Sequence[int],
                         style: str = "hermes") -> Callable[[], SchemaConstraint]:
    """The constraint factory for a call to one of ``functions`` (OpenAI function dicts: ``name``,
    ``parameters``), in Qwen2.5's ``<tool_call>`` format (``style="hermes"``) or the first
    generation's ReAct format (``"react"``: ``Action: NAME\\nAction Input: {...}\\n``), ending on one
    of ``stop_ids``."""
    return ToolCallConstraintFactory(tokenizer, list(functions), list(stop_ids), style)


# ------------------------------------------------------------------------------ a bare JSON reply
MAX_DEPTH = 4
"""Nesting of objects/arrays in a schema-free JSON object (``json_object``)."""


def _any_value(follow: list[str], depth: int, started: str = "") -> Walk:
    """Any JSON value (objects and arrays down to ``depth``; no exponents or escapes)."""
    if not started:
        starts = ['"', "true", "false", "null"] + list("-0123456789") + (["{", "["] if depth > 0 else [])
        started = yield Choice(starts)
    if started == "{":
        yield from _any_object(depth - 1, "{")
    elif started == "[":
        n = 0
        taken = yield Choice(["]"] + _any_starts(depth - 1))
        while taken != "]" and n < MAX_ITEMS:
            yield from _any_value([", ", "]"], depth - 1, taken)
            n += 1
            taken = yield Choice([", ", "]"] if n < MAX_ITEMS else ["]"])
            if taken == ", ":
                taken = yield Choice(_any_starts(depth - 1))
    elif started == '"':
        yield FreeString()
    elif started in ("true", "false", "null"):
        return
    else:
        yield Number(False, follow, started)


def _any_starts(depth: int) -> list[str]:
    return ['"', "true", "false", "null"] + list("-0123456789") + (["{", "["] if depth > 0 else [])


def _any_object(depth: int, started: str = "") -> Walk:
    """A JSON object with free keys (at most :data:`MAX_ITEMS`) and any values."""
    if not started:
        yield Choice(["{"])
    taken = yield Choice(['"', "}"])
    n = 0
    while taken != "}":
        yield FreeString(min_chars=1, max_chars=64)
        yield Choice([": "])
        yield from _any_value([", ", "}"], depth)
        n += 1
        taken = yield Choice([', "', "}"] if n < MAX_ITEMS else ["}"])


@dataclass
class JSONConstraintFactory:
    """A :attr:`SamplingParams.constraint` factory for a reply that is one JSON object: following
    ``schema`` (an object schema, as in OpenAI's ``response_format: json_schema``) or, with ``schema``
    None, any object (``json_object``), then one of ``stop_ids``."""

    tokenizer: Any
    schema: dict | None
    stop_ids: list[int]
    index: VocabularyIndex = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.schema is not None and _normalise(self.schema)["type"] != "object":
            raise ValueError("the schema's root must be an object (type: object with properties)")
        if not self.stop_ids:
            raise ValueError("a JSON constraint needs a stop token id to end on")
        self.index = vocabulary_index(self.tokenizer)

    def __call__(self) -> SchemaConstraint:
        walk = _any_object(MAX_DEPTH) if self.schema is None else _object(_normalise(self.schema), "")
        return SchemaConstraint(self.index, walk, self.stop_ids)


def json_constraint(tokenizer: Any, schema: dict | None, stop_ids: Sequence[int]) -> JSONConstraintFactory:
    """The constraint factory of a JSON-object reply (``schema`` None: any object)."""
    return JSONConstraintFactory(tokenizer, schema, list(stop_ids))


__all__ = ["MAX_ITEMS", "MAX_STRING", "JSONConstraintFactory", "SchemaConstraint", "ToolCallConstraintFactory",
           "VocabularyIndex", "json_constraint", "tool_call_constraint", "vocabulary_index"]
