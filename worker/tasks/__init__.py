"""Thin Celery tasks: claim the request, call the provisioning core, record vcld's transitions."""
