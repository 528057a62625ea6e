"""imagenet-cli: the PyTorch ImageNet reference script as a tool a team would own."""

__version__ = "0.1.0"
