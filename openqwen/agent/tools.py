"""Tools an agent can call: a registry (name, description, JSON schema, callable) and the built-ins.

A call never raises into the agent loop: unknown names, arguments that are not JSON, arguments
that do not validate against the tool's schema (``jsonschema``, checked before the callable runs)
and exceptions of the tool itself all come back as a :class:`ToolResult` with ``ok=False`` and a
message the model reads as its observation, so it can correct itself.

Built-ins (:func:`builtin_tools`):

* ``calculator``: arithmetic on numbers (``+ - * / // % **``, parentheses, ``sqrt``, ``log``,
  ``sin`` ..., ``pi``, ``e``), evaluated from the syntax tree; no names, attributes or calls outside
  that list, so nothing of Python is reachable, and exponents and results are bounded;
* ``read_file``: a text file inside one folder; paths that lead outside it (``..``, absolute paths,
  symbolic links) are refused, checked on the opened file itself;
* ``python``: the sandboxed code interpreter (:class:`~openqwen.agent.interpreter.CodeInterpreter`),
  started at its first call.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

__all__ = ["Tool", "ToolRegistry", "ToolResult", "builtin_tools", "calculate", "calculator_tool",
           "file_reader_tool", "interpreter_tool"]


@dataclass
class Tool:
    """One tool: what the model is told (name, description, JSON-schema parameters) and what runs."""

    name: str
    description: str
    parameters: dict
    fn: Callable[..., Any]
    """Called with the validated arguments as keywords; its return value (str, or anything
    JSON-serialisable) becomes the observation."""

    def schema(self) -> dict:
        """The tool in OpenAI's form (what chat templates and the API take)."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


@dataclass
class ToolResult:
    """What a call returned: the observation text, and whether the tool ran and succeeded."""

    name: str
    content: str
    ok: bool
    data: Any = None
    """The tool's raw return value (e.g. the interpreter's result with its figures)."""
    arguments: dict = field(default_factory=dict)


class ToolRegistry:
    """Tools by name. ``call(name, arguments)`` validates and runs one, and never raises."""

    def __init__(self, tools: Iterable[Tool] = (), max_observation_chars: int = 4000) -> None:
        self._tools: dict[str, Tool] = {}
        self.max_observation_chars = max_observation_chars
        for t in tools:
            self.register(t)

    def register(self, tool: Tool) -> Tool:
        from jsonschema import Draft202012Validator  # noqa: PLC0415
        from jsonschema.exceptions import SchemaError  # noqa: PLC0415

        if not tool.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"tool names are letters, digits, '_' and '-', got {tool.name!r}")
        if tool.name in self._tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        try:
            Draft202012Validator.check_schema(tool.parameters)
        except SchemaError as e:
            raise ValueError(f"tool {tool.name!r}: its parameters are not a valid JSON schema: {e.message}") from None
        if tool.parameters.get("type") != "object":
            raise ValueError(f"tool {tool.name!r}: parameters must be a JSON schema of type 'object'")
        self._tools[tool.name] = tool
        return tool

    def __contains__(self, name: str) -> bool:
        return name in self._tools

    def __iter__(self):
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def schemas(self) -> list[dict]:
        return [t.schema() for t in self._tools.values()]

    def call(self, name: str, arguments: str | dict | None) -> ToolResult:
        """Run tool ``name`` with ``arguments`` (a JSON object, or its text)."""
        from jsonschema import Draft202012Validator  # noqa: PLC0415

        tool = self._tools.get(name)
        if tool is None:
            return ToolResult(name, f"Error: there is no tool named {name!r}; the tools are: "
                                    f"{', '.join(self._tools) or '(none)'}", ok=False)
        if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
            arguments = {}
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as e:
                return ToolResult(name, f"Error: the arguments of {name} are not valid JSON ({e.msg} at "
                                        f"character {e.pos}); write them as a JSON object", ok=False)
        if not isinstance(arguments, dict):
            return ToolResult(name, f"Error: the arguments of {name} must be a JSON object, got "
                                    f"{type(arguments).__name__}", ok=False)
        errors = sorted(Draft202012Validator(tool.parameters).iter_errors(arguments), key=lambda e: list(e.path))
        if errors:
            where = "/".join(str(p) for p in errors[0].path) or "(top level)"
            return ToolResult(name, f"Error: invalid arguments for {name} at {where}: {errors[0].message}",
                              ok=False, arguments=arguments)
        try:
            value = tool.fn(**arguments)
        except Exception as e:  # noqa: BLE001 - the model reads the error and may correct itself
            return ToolResult(name, f"Error: {type(e).__name__}: {e}", ok=False, arguments=arguments)
        ok = True
        if hasattr(value, "observation"):  # the interpreter's ExecutionResult
            text, ok = value.observation(), bool(getattr(value, "ok", True))
        elif isinstance(value, str):
            text = value
        else:
            try:
                text = json.dumps(value, ensure_ascii=False, sort_keys=True)
            except TypeError:
                text = str(value)
        if len(text) > self.max_observation_chars:
            text = text[: self.max_observation_chars] + f"\n[... {len(text) - self.max_observation_chars} characters cut]"
        return ToolResult(name, text, ok=ok, data=value, arguments=arguments)


# ------------------------------------------------------------------------------ calculator
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS: dict[str, Callable[..., float]] = {
    "sqrt": math.sqrt, "log": math.log, "log10": math.log10, "log2": math.log2, "exp": math.exp,
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "asin": math.asin, "acos": math.acos, "atan": math.atan,
    "abs": abs, "round": round, "floor": math.floor, "ceil": math.ceil, "min": min, "max": max,
    "factorial": math.factorial,
}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}
_MAX_EXPONENT = 10_000
_MAX_DIGITS = 4300  # Python's own int-to-str limit


def calculate(expression: str) -> int | float:
    """The value of an arithmetic expression; ValueError for anything else.

    >>> calculate("2 ** 10 + sqrt(16) * (3 - 1)")
    1032.0
    """
    if len(expression) > 1000:
        raise ValueError("the expression is longer than 1000 characters")
    try:
        tree = ast.parse(expression.replace("^", "**"), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"not an arithmetic expression: {e.msg}") from None

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.Name) and node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](ev(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
                raise ValueError(f"exponent {right} is too large (at most {_MAX_EXPONENT})")
            value = _BINARY[type(node.op)](left, right)
            if isinstance(value, int) and value.bit_length() > _MAX_DIGITS * 3.33:
                raise ValueError("the result has too many digits")
            return value
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS
                and not node.keywords):
            args = [ev(a) for a in node.args]
            if node.func.id == "factorial" and (not args or args[0] > 1000):
                raise ValueError("factorial takes one number up to 1000")
            return _FUNCTIONS[node.func.id](*args)
        what = type(node).__name__
        if isinstance(node, ast.Name):
            what = f"the name {node.id!r}"
        elif isinstance(node, ast.Call):
            what = "a call of something other than " + ", ".join(sorted(_FUNCTIONS))
        raise ValueError(f"{what} is not allowed in an arithmetic expression")

    try:
        value = ev(tree)
    except ZeroDivisionError:
        raise ValueError("division by zero") from None
    except OverflowError:
        raise ValueError("the result is too large") from None
    return value


def calculator_tool() -> Tool:
    return Tool("calculator", "Evaluate an arithmetic expression exactly (+ - * / // % **, parentheses, sqrt, log, "
                              "exp, sin, cos, tan, abs, round, min, max, factorial, pi, e).",
                {"type": "object", "properties": {"expression": {"type": "string", "description":
                 "the expression, e.g. '(3 + 4) * 2 ** 5'"}}, "required": ["expression"]},
                lambda expression: str(calculate(expression)))


# ------------------------------------------------------------------------------ file reader
def file_reader_tool(root: str | Path, max_chars: int = 20_000) -> Tool:
    """``read_file``: a text file inside ``root`` (relative paths; nothing outside it, symlinks included)."""
    base = Path(root).expanduser().resolve()
    if not base.is_dir():
        raise ValueError(f"the file reader's folder {base} does not exist or is not a folder")

    def read_file(path: str, offset: int = 0) -> str:
        if "\x00" in path:
            raise ValueError("the path contains a NUL byte")
        candidate = (base / path) if not os.path.isabs(path) else Path(path)
        fd = os.open(candidate, os.O_RDONLY | os.O_NONBLOCK)  # non-blocking: a FIFO must not hang us
        try:
            real = Path(os.readlink(f"/proc/self/fd/{fd}")) if os.path.exists("/proc/self/fd") else \
                Path(os.path.realpath(candidate))
            if real != base and base not in real.parents:
                raise PermissionError(f"{path!r} is outside the folder this tool may read")
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ValueError(f"{path!r} is not a regular file")
            with os.fdopen(os.dup(fd), "rb") as f:
                f.seek(max(0, offset))
                data = f.read(max_chars * 4 + 1)
        finally:
            os.close(fd)
        text = data.decode("utf-8", errors="replace")
        if len(text) > max_chars:
            text = text[:max_chars] + f"\n[... file continues; call again with offset={offset + max_chars * 4}]"
        return text

    return Tool("read_file", f"Read a text file from the folder {base.name!r} (paths relative to it).",
                {"type": "object", "properties": {
                    "path": {"type": "string", "description": "the file's path inside the folder"},
                    "offset": {"type": "integer", "minimum": 0, "description": "byte offset to start at (default 0)"}},
                 "required": ["path"]}, read_file)


# ------------------------------------------------------------------------------ interpreter
def interpreter_tool(interpreter: Any = None, timeout_s: float | None = None) -> Tool:
    """``python``: run code in a sandboxed, stateful kernel (started at the first call)."""
    holder: dict[str, Any] = {"ci": interpreter}

    def python(code: str) -> Any:
        if holder["ci"] is None:
            from .interpreter import CodeInterpreter  # noqa: PLC0415 - starts a kernel only when used

            holder["ci"] = CodeInterpreter().start()
        return holder["ci"].run(code, timeout_s=timeout_s)

    tool = Tool("python", "Run Python code in a stateful, sandboxed Jupyter kernel (no network; files only in its "
                          "work folder). Returns stdout, the last expression's value, errors and plots.",
                {"type": "object", "properties": {"code": {"type": "string", "description": "the Python code"}},
                 "required": ["code"]}, python)
    tool.interpreter = holder  # type: ignore[attr-defined] - lets the owner close the kernel it started
    return tool


def builtin_tools(files_root: str | Path | None = None, interpreter: bool = True) -> ToolRegistry:
    """A registry of the built-ins: calculator, read_file (when ``files_root`` is given), python."""
    reg = ToolRegistry([calculator_tool()])
    if files_root is not None:
        reg.register(file_reader_tool(files_root))
    if interpreter:
        reg.register(interpreter_tool())
    return reg
