"""Development benchmarks and tools, run from a checkout and never installed: `python -m bench.gpu_stage`,
`python -m bench.decode_error`, `python -m bench.listing`, `python -m bench.report_screenshot`.

What a user runs to size a machine is in the package: `actindex bench` (actindex.jobs.benchmark).
"""
