"""The command line (`imagenet-cli`): see app.py."""

from .app import app, main, run

__all__ = ["app", "main", "run"]
