"""What a job does: enqueue, one step, endings, callbacks, notices, image copies,
failures and batches. Celery only through `kie_covers.runtime`."""
