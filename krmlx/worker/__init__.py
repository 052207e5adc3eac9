"""The worker process (``python -m krmlx.worker``) and its client."""
