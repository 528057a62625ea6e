"""The tool commands' work. The words they take are here, free of torch, so that the command line offers
them (`--help`, shell completion) without importing torch; so is how to read an installed version."""

BENCHMARK_PARTS = ("train", "eval", "pipeline", "e2e", "e2e-command")
DEFAULT_BENCHMARK_PARTS = BENCHMARK_PARTS[:4]  # e2e-command runs whole commands, several times: when asked
# export --format, and each format's default file extension
EXPORT_EXTENSIONS = {
    "pt2": ".pt2",
    "onnx": ".onnx",
    "safetensors": ".safetensors",
    "torchscript": ".ts",
    "state_dict": ".pth",
}


def installed_version(package: str) -> str | None:
    """`package`'s version from its installed metadata, without importing it; None when it is not installed."""
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
