"""Benchmarks for kie-covers, run against the Kie stand-in on loopback.

``python -m bench.rate_limit`` compares this project's cluster-wide rate limiter
with what a typical Celery app writes (`bench.plain_app`).

``python -m bench.perf`` measures throughput, enqueue cost, completion latency and
memory with many covers in flight against `bench.plain_perf_app` (the parts are in
``bench.perf_*``). ``python -m bench.soak`` runs the chaos scenarios round after
round (``bench.soak_*``). Shared helpers: `bench.common`, and `bench.proc` (CPU
and memory from /proc).
"""
