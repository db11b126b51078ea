"""Entry points: the ``covers`` CLI, the callback endpoint, the dispatcher, the demo.

``celery -A kie_covers.worker worker`` finds the worker's app in
`kie_covers.worker.celery` (Celery looks there when a package has no ``app``).
"""
