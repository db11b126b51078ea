"""Benchmarks for kie-covers, run against the Kie stand-in on loopback.

``python -m bench.rate_limit`` compares this project's cluster-wide rate limiter
with what a typical Celery app writes (`bench.plain_app`).
"""
