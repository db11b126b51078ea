"""The pure core: errors, schemas, answers -> errors, retry policy, signing, states.

No Celery, no Redis, no HTTP client and no global settings (import-linter checks).
"""
