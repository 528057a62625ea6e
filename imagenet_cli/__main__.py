"""`python -m imagenet_cli` and `torchrun -m imagenet_cli`."""

from .cli import main

main()
