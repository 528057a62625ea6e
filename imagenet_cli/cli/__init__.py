"""The command line (`imagenet-cli`): see app.py."""

from .app import app, main

__all__ = ["app", "main"]
