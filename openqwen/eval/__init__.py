"""Evaluation: benchmark tasks, the sandboxed code runner, pass@k, contamination, the harness.

``openqwen eval`` (see :mod:`openqwen.eval.cli`) drives :func:`openqwen.eval.harness.run_eval`.
"""
