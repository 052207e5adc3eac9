"""Serving stages; see krmlx.stack for their order."""
