"""Shared fixtures. Tests that need a real artifact ask for it through `artifact` and skip cleanly
when ../shared/tools/fetch-artifacts has not been run (CI runs it)."""

from __future__ import annotations

import pytest
import torch

from openqwen.artifacts import artifact_path


@pytest.fixture(scope="session")  # a getter, usable by fixtures of any scope
def artifact():
    def get(name: str):
        path = artifact_path(name)
        if path is None:
            pytest.skip(f"artifact {name!r} not fetched (run ../shared/tools/fetch-artifacts)")
        return path

    return get


@pytest.fixture(autouse=True)
def _few_threads():
    # Tests run two at a time on two cores (pytest -n 2); one thread each avoids oversubscription.
    torch.set_num_threads(1)
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """A test that reaches the code sandbox on a host without bubblewrap skips, naming what to install
    (CI installs it). Only when the probe finds tools missing: on a host that has them, the sandbox's
    refusal is a failure like any other."""
    outcome = yield
    excinfo = outcome.excinfo
    if excinfo is None:
        return
    from openqwen.agent.isolation import SandboxUnavailable, sandbox_support

    problem = sandbox_support().problem
    if problem and issubclass(excinfo[0], SandboxUnavailable):
        outcome.force_exception(pytest.skip.Exception(problem, _use_item_location=True))
