"""What a process runs on: the Celery app (a leaf), connections, the Kie client, metrics,
logs, and the messages sent by task name."""
