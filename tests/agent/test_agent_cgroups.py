"""The sandbox's cgroups (openqwen/agent/cgroups.py): the v1 path this host has, the cgroup v2 path
(delegated: limits written; not delegated: detected, and refused with a clear message when the
policy requires cgroups), and detection on a real cgroup v2 hierarchy mounted on this host."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from openqwen.agent import isolation
from openqwen.agent.cgroups import detect, make_cgroups
from openqwen.agent.isolation import IsolationPolicy, Sandbox, SandboxUnavailable, sandbox_support


def fake_v2(tmp_path: Path, delegated: str) -> tuple[Path, str]:
    """A cgroup v2 tree as the kernel lays it out: our cgroup /app with the controllers available
    and ``delegated`` enabled in its cgroup.subtree_control; returns (mount root, /proc/self/cgroup)."""
    root = tmp_path / "cgroup"
    app = root / "app"
    app.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids\n")
    (app / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids\n")
    (app / "cgroup.subtree_control").write_text(delegated + "\n")
    return root, "0::/app\n"


def test_delegated_v2_writes_pids_memory_and_cpu_limits(tmp_path):
    root, proc = fake_v2(tmp_path, "cpu memory pids")
    support = detect(proc, root, probe=lambda base, limit: True)  # the kernel would create the files
    assert support.version == 2 and support.problem == ""
    assert support.bases == {c: root / "app" for c in ("pids", "memory", "cpu")}
    made = make_cgroups(support, "sb-1", max_processes=16, memory_mb=64, cpu_cores=0.5)
    cg = root / "app" / "sb-1"
    assert made == {"pids": cg, "memory": cg, "cpu": cg}
    assert (cg / "pids.max").read_text() == "16"
    assert (cg / "memory.max").read_text() == str(64 * 1024 * 1024)
    assert (cg / "cpu.max").read_text() == "50000 100000"  # half a core per 100 ms period


def test_v2_without_delegation_is_detected_and_refused_when_required(tmp_path, monkeypatch):
    root, proc = fake_v2(tmp_path, "cpu")  # cpu delegated; pids and memory not
    probes = []
    support = detect(proc, root, probe=lambda base, limit: probes.append(limit) or True)
    assert support.version == 2 and set(support.bases) == {"cpu"} and probes == ["cpu.max"]
    assert f"pids is not enabled in {root / 'app'}/cgroup.subtree_control (not delegated)" in support.problem
    assert "memory is not enabled" in support.problem and "Delegate=yes" in support.problem

    real = sandbox_support()
    if real.problem:
        pytest.skip(real.problem)
    monkeypatch.setattr(isolation, "_support", dataclasses.replace(real, cgroups={}, cgroup_version=0,
                                                                   cgroup_problem=support.problem))
    with pytest.raises(SandboxUnavailable, match="requires cgroup limits, and cgroup v2: pids is not enabled"):
        Sandbox(IsolationPolicy(require_cgroups=True))
    # not required: the sandbox falls back to rlimits, says so, and still runs (and confines) a program
    with Sandbox(IsolationPolicy(max_processes=16)) as sb:
        assert sb.enforced["processes"].startswith("RLIMIT_NPROC=16")
        assert sb.enforced["memory_cgroup"].startswith("none") and "not delegated" in sb.enforced["cgroup_problem"]
        out = tmp_path / "out.txt"
        with out.open("wb") as f:
            proc_ = sb.popen([sys.executable, "-c", "import os; print(os.getuid(), os.path.exists('/etc/shadow'))"],
                             stdout=f)
            proc_.wait(60)
        uid = 65534 if os.geteuid() == 0 else os.getuid()
        assert out.read_text().split() == [str(uid), "False"]


def test_detection_on_a_real_cgroup2_hierarchy_of_this_host(tmp_path):
    # a hybrid host: cgroup v2 mounted (in a private mount namespace) holds none of the controllers
    # the v1 hierarchies hold, and detection says exactly that instead of pretending
    if os.geteuid() != 0:
        pytest.skip("mounting cgroup2 needs root")
    mnt = tmp_path / "cg2"
    mnt.mkdir()
    code = ("import sys; from pathlib import Path; from openqwen.agent.cgroups import detect, probe_child; "
            f"s = detect('0::/\\n', Path({str(mnt)!r})); print(s.version); print(s.problem); "
            f"print(probe_child(Path({str(mnt)!r}), 'cgroup.procs'))")
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                        f"mount -t cgroup2 none {mnt} && exec {sys.executable} -c \"$0\"", code],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0 and "mount" in r.stderr:
        pytest.skip(f"cannot mount cgroup2 here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    version, problem, can_make_child = r.stdout.strip().split("\n")
    bound = {r.split()[0] for r in Path("/proc/cgroups").read_text().splitlines()[1:] if r.split()[1] != "0"}
    if "pids" not in bound:  # a host whose v2 holds the controllers: the hybrid case does not apply
        pytest.skip(f"pids is not bound to a cgroup v1 hierarchy here (version {version})")
    assert version == "0"
    assert f"pids is not in {mnt}/cgroup.controllers (a cgroup v1 hierarchy holds it on this host)" in problem
    assert can_make_child == "True"  # the v2 hierarchy itself works: children are made, processes can join


def test_this_hosts_v1_cgroups_are_used_and_enforced_by_the_sandbox():
    sup = sandbox_support()
    if sup.problem or sup.cgroup_version != 1:
        pytest.skip(f"not a cgroup v1 host ({sup.cgroup_version}) or no sandbox: {sup.problem}")
    with Sandbox(IsolationPolicy(max_processes=16, memory_mb=64)) as sb:
        assert sb.enforced["processes"] == "cgroup v1 pids.max=16"
        assert sb.enforced["memory_cgroup"] == "cgroup v1 64 MB"
        assert (sb._cgroups["pids"] / "pids.max").read_text().strip() == "16"


def test_agent_require_cgroups_is_one_line_before_the_model_loads(tmp_path, monkeypatch, capsys):
    from openqwen.cli import main

    root, proc = fake_v2(tmp_path, "")
    problem = detect(proc, root, probe=lambda base, limit: True).problem
    real = sandbox_support()
    monkeypatch.setattr(isolation, "_support", dataclasses.replace(real, cgroups={}, cgroup_version=0,
                                                                   cgroup_problem=problem))
    assert main(["agent", "--model", str(tmp_path / "no-model"), "--require-cgroups", "What is 2+2?"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--require-cgroups: cgroup v2: pids is not enabled" in err
