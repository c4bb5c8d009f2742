"""Agents: tools (registry, schemas, built-ins), the ReAct and function-calling loops, the sandboxed
code interpreter and the isolation it shares with the evaluation sandbox."""
