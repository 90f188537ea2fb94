"""GPU benchmarks of DDB's stages on the real architectures (random weights): run as modules,
``python -m bench.gpu.ddb_throughput`` / ``python -m bench.gpu.stage_throughput``; the
prepared device script is ``bench/gpu/check.sh``. Each has a ``--smoke`` mode on CPU with
tiny models (tests/tiny_models.py) that the test suite runs. See docs/ddb.md."""
