"""What a run shows of itself: progress lines, metrics.jsonl, tables and pictures.

The words `plot` takes are here, free of matplotlib and of the modules that draw, so the command line
offers them without importing either."""

X_AXES = ("epoch", "time")  # what `plot --x-axis` places points by
