"""The Celery + Redis baseline of benchmark item 3 (issue 7).

The steps of Kiln's pipeline for a sandbox job, built the usual way: an HTTP endpoint (FastAPI
on uvicorn, api.py) that checks and charges credits in SQL (SQLite, db.py) and queues a Celery
task on Redis (Debian's redis-server); the task (tasks.py) calls the same Triton model as
Kiln's sandbox jobs (inference.py), stores the file, records the outcome in SQL and POSTs a
webhook. launcher.CeleryBaseline starts and stops the whole thing.
"""
