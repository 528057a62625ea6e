"""What the tool commands print once: tables on a terminal, or one JSON object with --json."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

from ..core.text import clip, printable
from ..report.tables import literal

# e2e-command's phases (tools/e2e_command.py), as the table names them
PHASE_LABELS = {"start_to_first_step": "start -> first step", "steps": "steps",
                "last_step_to_exit": "last step -> exit", "total": "total"}  # fmt: skip


def print_inspection(summary: dict[str, Any], as_json: bool) -> None:
    """`inspect`: a two-column table, or the same facts as one JSON object."""
    if as_json:
        print(json.dumps(summary), flush=True)
        return
    table = _pairs(literal(summary["path"]))
    for key, value in summary.items():
        if key == "path" or value is None:
            continue
        if key == "class_names":
            value = ", ".join(clip(name) for name in value[:10]) + (
                f" … ({len(value)} in all)" if len(value) > 10 else ""
            )
        elif key == "versions":
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif key in ("parameters", "size_bytes"):
            value = f"{value:,}"
        table.add_row(key.replace("_", " "), literal(value))
    Console(width=None if sys.stdout.isatty() else 120).print(table)


def print_benchmark(result: dict[str, Any], as_json: bool) -> None:
    """`benchmark`: one row per measurement, ours beside the baseline and their ratio."""
    if as_json:
        print(json.dumps(result), flush=True)
        return
    machine = result["machine"]
    title = (
        f"{machine['device_name']} ({machine['device']}, {machine['cpu_cores']} CPU cores), "
        f"torch {machine['torch']}" + (f"; ours: {result['compute']}" if "compute" in result else "")
    )
    console = Console(width=None if sys.stdout.isatty() else 140)
    if "commands" in result:
        console.print(_commands_table(title, result["commands"]))
    if not result["results"]:
        return
    table = _columns(title, ("part", "what"), ("ours img/s", "baseline img/s", "ours / baseline"))
    for row in result["results"]:
        table.add_row(
            row["part"], row["what"], f"{row['ours_images_per_second']:,.1f}",
            f"{row['baseline_images_per_second']:,.1f}", f"{row['ratio']:.2f}x",
        )  # fmt: skip
    console.print(table)


def _commands_table(machine: str, commands: dict[str, Any]) -> Table:
    """e2e-command: seconds of each phase, medians of the rounds, each round's figures beside them."""
    rounds = commands["rounds"]
    title = f"e2e-command: {commands['what']}; {machine}; medians of {len(rounds)} rounds, alternated"
    table = _columns(
        title, ("phase",), ("reference s", "ours s", "reference / ours", "rounds: reference", "rounds: ours")
    )
    for phase, label in PHASE_LABELS.items():
        ratio = commands["ratio"][phase]
        table.add_row(
            label, f"{commands['median']['reference'][phase]:.2f}", f"{commands['median']['ours'][phase]:.2f}",
            f"{ratio:.2f}x" if ratio is not None else "-",
            *(", ".join(f"{r[side][phase]:.2f}" for r in rounds) for side in ("reference", "ours")),
        )  # fmt: skip
    return table


def print_data_check(report: dict[str, Any], as_json: bool) -> None:
    """`check-data`: what was read, what could not be, and what the pictures are like."""
    if as_json:
        print(json.dumps(report), flush=True)
        return
    console = Console(width=None if sys.stdout.isatty() else 120)
    for note in report["notes"]:
        console.print(f"note: {printable(note)}", highlight=False, markup=False)
    per_split = ", ".join(f"{split} {n}" for split, n in report["per_split"].items())
    console.print(f"checked {report['files']} images ({per_split}): {len(report['unreadable'])} unreadable")
    if report["unreadable"]:
        table = Table(title="Unreadable images", title_justify="left")
        table.add_column("file", overflow="fold")
        table.add_column("problem", overflow="fold")
        for row in report["unreadable"][:50]:
            table.add_row(literal(row["file"]), literal(row["problem"]))
        console.print(table)
    for title, key in (("Colour modes", "modes"), ("Formats", "formats"), ("Shorter side", "shorter_side")):
        table = _columns(title, (title.lower(),), ("images",))
        for name, count in report[key].items():
            table.add_row(literal(name), f"{count:,}")
        console.print(table)


def print_predictions(outcome: dict[str, Any], as_json: bool) -> None:
    """`predict`: one line per image, best class first, or one JSON object; notes and unreadable files go to
    stderr either way, so stdout holds only results."""
    for note in outcome["notes"]:
        print(f"note: {printable(note)}", file=sys.stderr, flush=True)
    for error in outcome["errors"]:
        print(
            f"error: cannot read {printable(error['path'])}: {printable(error['reason'])}", file=sys.stderr, flush=True
        )
    if as_json:
        shown = {k: outcome[k] for k in ("checkpoint", "predictions", "errors")}
        print(json.dumps(shown), flush=True)
        return
    console = Console(width=None if sys.stdout.isatty() else 120)
    for row in outcome["predictions"]:
        classes = ", ".join(f"{printable(top['class'])} {top['probability']:.3f}" for top in row["top"])
        console.print(f"{printable(row['path'])}: {classes}", soft_wrap=True, highlight=False, markup=False)


def print_models(rows: list[dict[str, Any]], as_json: bool, title: str | None = None) -> None:
    """`models`: one row per architecture, or `{"models": [...]}`; the count last, where a reader looks."""
    if as_json:
        print(json.dumps({"models": rows}), flush=True)
        return
    figures = ("parameters", "crop", "resize", "ImageNet top-1")
    table = _columns(title or "torchvision classifiers (default weights)", ("arch",), figures)
    for row in rows:
        parameters = row["parameters"]
        table.add_row(
            literal(row["name"]), f"{parameters / 1e6:,.1f}M" if parameters else "–", _or_dash(row["crop_size"]),
            _or_dash(row["resize_size"]), _or_dash(row["imagenet_acc1"], "{:.2f}%"),
        )  # fmt: skip
    console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(table)
    console.print(f"{len(rows)} architecture{'' if len(rows) == 1 else 's'}", highlight=False)


def print_environment(report: dict[str, Any], as_json: bool) -> None:
    """`env`: software, CPUs, accelerators (freest first), launcher variables, and what a run would do."""
    if as_json:
        print(json.dumps(report), flush=True)
        return
    console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(_environment_table(report))
    console.print(_extras_table(report["extras"]))
    if report["cuda"]:
        console.print(_cuda_table(report["cuda"]))
    launcher = _pairs("Launcher variables", overflow="fold")
    for name, value in report["launcher_env"].items():
        launcher.add_row(literal(name), literal(value))
    if report["launcher_env"]:
        console.print(launcher)
    else:
        console.print("launcher variables: none set (torchrun, SLURM, CUDA_VISIBLE_DEVICES, NCCL_*)", highlight=False)
    console.print(f"plan: {printable(report['plan']['summary'])}", soft_wrap=True, highlight=False, markup=False)


def _environment_table(report: dict[str, Any]) -> Table:
    """Versions, distributed backends, CPUs and devices other than CUDA, as name/value rows."""
    table = _pairs("Environment")
    for name, version in report["versions"].items():
        table.add_row(name.replace("_", " "), literal(version or "-"))
    table.add_row("distributed backends", _backends(report["distributed_backends"]))
    cpu = report["cpu"]
    usable = f", {cpu['usable']} usable by this process" if cpu["usable"] not in (None, cpu["count"]) else ""
    table.add_row("CPU cores", f"{cpu['count']}{usable}")
    table.add_row("torch threads", f"{cpu['torch_threads']} intra-op, {cpu['torch_interop_threads']} inter-op")
    table.add_row("CUDA devices", str(len(report["cuda"])))
    if report["mps"] is not None:
        table.add_row("MPS", "available" if report["mps"] else "not available")
    return table


def _extras_table(extras: dict[str, dict[str, Any]]) -> Table:
    """The optional parts: what each brings, installed or how to install it."""
    table = _pairs("Optional extras")
    for name, extra in extras.items():
        packages = ", ".join(
            f"{package} {version or 'not installed'}" for package, version in extra["packages"].items()
        )
        table.add_row(literal(name), literal(packages if extra["installed"] else f"{packages}: {extra['hint']}"))
    if not extras:
        table.add_row("-", "unknown: imagenet-cli is not installed as a package (pip install -e .)")
    return table


def _cuda_table(devices: list[dict[str, Any]]) -> Table:
    """CUDA devices, the one with the most free memory first."""
    figures = ("capability", "total", "in use", "free")
    table = _columns("CUDA devices (most free memory first)", ("device", "name"), figures)
    for d in devices:
        table.add_row(
            f"cuda:{d['index']}", literal(d["name"]), d["capability"], _gib(d["total_bytes"]), _gib(d["used_bytes"]),
            _gib(d["free_bytes"]) if d["free_bytes"] is not None else literal(d.get("error", "-")),
        )  # fmt: skip
    return table


def _columns(title: str, words: tuple[str, ...], figures: tuple[str, ...]) -> Table:
    """A table with a header: columns of words left-aligned, then columns of figures right-aligned."""
    return Table(*words, *(Column(name, justify="right") for name in figures), title=title, title_justify="left")


def _pairs(title: str | Text, **value_column: Any) -> Table:
    """A table of name/value rows: names in bold, no header."""
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(**value_column)
    return table


def _backends(available: dict[str, bool]) -> str:
    """The backends a run may use and, in brackets, those it may not: gloo, nccl (not mpi, ucc)."""
    have = ", ".join(name for name, has in available.items() if has) or "none"
    lacking = [name for name, has in available.items() if not has]
    return have + (f" (not {', '.join(lacking)})" if lacking else "")


def _gib(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**30:,.1f} GiB"


def _or_dash(value: object, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)
