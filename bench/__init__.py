"""Benchmarks against a running cluster. Run each from the repository root as a module, with the project's venv:

    .venv/bin/python -m bench.bench_create --count 50

so that it shares the test kit (``tests.kit``: starting the operator, watches, percentiles). Each prints the
command that produced its figures above them.
"""
