"""The tool registry (schema validation before the call, errors as observations), the calculator
(exact, and nothing of Python reachable) and the confined file reader."""

from __future__ import annotations

import math
import os

import pytest

from openqwen.agent.tools import Tool, ToolRegistry, calculate, calculator_tool, file_reader_tool


def test_calculator_matches_python_arithmetic():
    cases = {"2 ** 10 + 3 * (4 - 1)": 1033, "7 // 2": 3, "7 % 3": 1, "-(2 ** 3)": -8, "3 ^ 2": 9,
             "123456789 * 987654321": 121932631112635269, "10 / 4": 2.5}
    for expr, want in cases.items():
        got = calculate(expr)
        assert got == want and type(got) is type(want), expr
    assert calculate("sqrt(2) * sin(pi / 4)") == pytest.approx(math.sqrt(2) * math.sin(math.pi / 4))
    assert calculate("factorial(20)") == math.factorial(20)


@pytest.mark.parametrize("expr", ["__import__('os').system('id')", "(1).__class__", "open('/etc/passwd')",
                                  "[x for x in range(9)]", "lambda: 1", "9 ** 9 ** 9", "factorial(10**6)",
                                  "'a' * 3", "1 / 0", "x + 1", "2 ** 0.5 ** 99999 ** 2"])
def test_calculator_refuses_everything_else(expr):
    with pytest.raises(ValueError):
        calculate(expr)


def test_registry_validates_arguments_before_the_call():
    seen = []
    reg = ToolRegistry([Tool("weather", "the weather in a city",
                             {"type": "object", "properties": {"city": {"type": "string"},
                                                               "days": {"type": "integer", "minimum": 1}},
                              "required": ["city"], "additionalProperties": False},
                             lambda city, days=1: seen.append((city, days)) or {"city": city, "days": days})])
    ok = reg.call("weather", '{"city": "Paris", "days": 2}')
    assert ok.ok and ok.content == '{"city": "Paris", "days": 2}' and seen == [("Paris", 2)]
    for args, want in [('{"days": 2}', "invalid arguments for weather at (top level): 'city' is a required property"),
                       ('{"city": "Paris", "days": 0}', "invalid arguments for weather at days: 0 is less than the minimum of 1"),
                       ('{"city": 3}', "at city: 3 is not of type 'string'"),
                       ('{"city": "Paris", "when": 1}', "Additional properties are not allowed ('when' was unexpected)"),
                       ('{"city": "Paris"', "are not valid JSON (Expecting ',' delimiter at character 16)"),
                       ('["Paris"]', "must be a JSON object, got list")]:
        res = reg.call("weather", args)
        assert not res.ok and want in res.content, (args, res.content)
    assert seen == [("Paris", 2)]  # no invalid call reached the function
    missing = reg.call("forecast", "{}")
    assert not missing.ok and missing.content == "Error: there is no tool named 'forecast'; the tools are: weather"


def test_tool_exceptions_become_observations_and_long_output_is_cut():
    def boom(n: int):
        raise RuntimeError(f"broken {n}")

    reg = ToolRegistry([Tool("boom", "fails", {"type": "object", "properties": {"n": {"type": "integer"}}}, boom),
                        Tool("long", "talks", {"type": "object", "properties": {}}, lambda: "z" * 5000)],
                       max_observation_chars=100)
    assert reg.call("boom", {"n": 3}).content == "Error: RuntimeError: broken 3"
    long = reg.call("long", None)
    assert long.ok and long.content.startswith("z" * 100) and long.content.endswith("[... 4900 characters cut]")


def test_registry_refuses_bad_tools():
    reg = ToolRegistry([calculator_tool()])
    with pytest.raises(ValueError, match="already registered"):
        reg.register(calculator_tool())
    with pytest.raises(ValueError, match="not a valid JSON schema"):
        reg.register(Tool("bad", "", {"type": "object", "properties": {"x": {"type": "nonsense"}}}, print))
    with pytest.raises(ValueError, match="type 'object'"):
        reg.register(Tool("bad2", "", {"type": "string"}, print))
    assert reg.schemas()[0]["function"]["name"] == "calculator"


def test_file_reader_stays_inside_its_folder(tmp_path):
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.txt").write_text("inside")
    (tmp_path / "secret.txt").write_text("outside")
    os.symlink(tmp_path / "secret.txt", root / "link.txt")
    os.symlink(tmp_path, root / "uplink")
    os.mkfifo(root / "pipe")
    reg = ToolRegistry([file_reader_tool(root)])
    assert reg.call("read_file", {"path": "sub/a.txt"}).content == "inside"
    for path, why in [("../secret.txt", "outside the folder"), (str(tmp_path / "secret.txt"), "outside the folder"),
                      ("link.txt", "outside the folder"), ("uplink/secret.txt", "outside the folder"),
                      ("pipe", "not a regular file"), ("nope.txt", "No such file"), ("sub", "not a regular file")]:
        res = reg.call("read_file", {"path": path})
        assert not res.ok and why in res.content, (path, res.content)
