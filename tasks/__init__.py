"""The Celery-registered tasks, and nothing else.

Each module registers one task by the name in `kie_covers.runtime.messages`;
what a task does lives in `kie_covers.services`. Workers import these modules
(`kie_covers.runtime.app` lists them); nothing else needs to.
"""
