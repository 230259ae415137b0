"""Benchmark harness of the Payment Service: `make bench` / `python -m bench --help`.

wrk drives the API started as production runs it; pgbench measures the database's
ceiling for the same SQL in the same run; the result is a Markdown table and a JSON
file under bench/results/ (git-ignored).
"""
