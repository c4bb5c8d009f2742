"""Benchmark task families: multiple choice, code, math, perplexity."""
