"""Benchmarks: each script prints markdown tables and writes JSON to bench/results/.

Run from the repository root with the project's venv, e.g. ``.venv/bin/python -m bench.serving``.
Speed goals live here, as printed figures, never in timed tests.
"""
