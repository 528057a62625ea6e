"""The tool commands' work. The words they take are here, free of torch, so that the command line offers
them (`--help`, shell completion) without importing torch."""

BENCHMARK_PARTS = ("train", "eval", "pipeline", "e2e")
# export --format, and each format's default file extension
EXPORT_EXTENSIONS = {
    "pt2": ".pt2",
    "onnx": ".onnx",
    "safetensors": ".safetensors",
    "torchscript": ".ts",
    "state_dict": ".pth",
}
