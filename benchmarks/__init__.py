"""Benchmarks: each module measures openqwen against a peer in the same run and writes its report to
docs/benchmarks/. Run one with `python -m benchmarks.bench_NAME`, all with `make bench`."""
