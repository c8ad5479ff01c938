"""pushlake's benchmarks: run each as a module from the repository root,
``.venv/bin/python -m bench.<name>_bench [--quick]``, or all with ``make bench`` (bench/README.md)."""
