"""Redis: job records (the only door to them), runs, due sets, the limiter, failures.

No Celery and no HTTP (import-linter checks). The Lua scripts live in ``lua/``.
"""
