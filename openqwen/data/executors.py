"""Executors run one stage function over many shards: locally in processes, or on a Ray cluster.

Both take the same plain, importable function and a list of task dicts and return the results in
task order; each task names its own input shard, so every worker reads only its shards. The
stage code never knows which executor runs it.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Protocol


class Executor(Protocol):
    def map(self, fn: Callable[[dict[str, Any]], Any], tasks: list[dict[str, Any]], desc: str = "") -> list[Any]: ...


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc or "shards", unit="shard", mininterval=1.0, disable=total <= 1)


class LocalExecutor:
    """``workers`` processes on this machine (1 = run inline, which is easiest to debug).

    Workers are forked where the platform allows it (Linux): they start in milliseconds and inherit
    the imported modules instead of importing the package (and torch with it) again; the stage
    functions use only numpy and the standard library, so no thread pool is in use across the
    fork. Elsewhere they are spawned. The pool lives as long as the executor (``close()`` or a
    ``with`` block ends it), so a multi-stage run pays the start-up once.
    """

    def __init__(self, workers: int = 1):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            import multiprocessing as mp

            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context(method))
        return self._pool

    def map(self, fn: Callable[[dict[str, Any]], Any], tasks: list[dict[str, Any]], desc: str = "") -> list[Any]:
        if not tasks:
            return []
        bar = _progress(len(tasks), desc)
        try:
            if self.workers == 1 or len(tasks) == 1:
                results = []
                for t in tasks:
                    results.append(fn(t))
                    bar.update()
                return results
            futures = [self._get_pool().submit(fn, t) for t in tasks]
            for f in futures:
                f.add_done_callback(lambda _f: bar.update())
            return [f.result() for f in futures]
        finally:
            bar.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to clean
            pass


class RayExecutor:
    """Runs each task as a Ray task (``num_cpus`` per task). Needs the ``ray`` extra
    (``pip install 'openqwen[ray]'``). ``address=None`` starts a local Ray; ``"auto"`` joins the
    running cluster; ``ray://host:10001`` a remote one."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None, cpus_per_task: float = 1.0):
        try:
            import ray
        except ImportError as e:
            raise ImportError("the Ray executor needs ray: pip install 'openqwen[ray]'") from e
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address, num_cpus=num_cpus, include_dashboard=False,
                     log_to_driver=False, ignore_reinit_error=True)
        self.cpus_per_task = cpus_per_task

    def map(self, fn: Callable[[dict[str, Any]], Any], tasks: list[dict[str, Any]], desc: str = "") -> list[Any]:
        if not tasks:
            return []
        remote = self.ray.remote(num_cpus=self.cpus_per_task)(fn)
        refs = [remote.remote(t) for t in tasks]
        bar = _progress(len(refs), desc)
        pending = list(refs)
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            bar.update(len(done))
        bar.close()
        return self.ray.get(refs)


def make_executor(name: str = "local", workers: int = 1, address: str | None = None) -> Executor:
    """``"local"`` or ``"ray"``."""
    if name == "local":
        return LocalExecutor(workers)
    if name == "ray":
        return RayExecutor(address=address, num_cpus=workers if address is None else None)
    raise ValueError(f"unknown executor {name!r}: use 'local' or 'ray'")
