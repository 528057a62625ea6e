"""The GPU path: every CUDA and NCCL line of the tool, run for real on a machine with a GPU.

Run with `bash scripts/gpu-check.sh` (the tests, then ResNet-50 benchmarks), with pytest
(`python3 -m pytest tests/gpu -m cuda`), or without pytest (`python3 -m tests.gpu`). The tests are plain
functions whose only fixture is `tmp_path`, so both runners can call them. Without CUDA every one of
them is skipped with one reason, at no cost.
"""
