"""One-off studies and probes of the toy benchmark and the DDB pipeline, each answering one
question, run as ``python -m bench.studies.<name> ... --out results/studies/<name>/<report>.json``.
What each one asked and found: docs/studies.md. Not part of the harness: nothing in bench/
or spuraug/ imports them."""
