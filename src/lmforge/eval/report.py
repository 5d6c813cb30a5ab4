"""The console summary of an eval run: a table of categories (and subjects when few), or the task's numbers."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

# Subjects are listed one per row when there are at most this many; beyond, categories are enough on screen
# (results.json has every subject).
MAX_SUBJECT_ROWS = 20


def _pct(value: float) -> str:
    return f"{value:.2f}"


def print_results(results: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(stderr=False)
    if "subjects" in results:
        table = Table(title=f"{results['task']}: accuracy (%), {results['config']['eval']['n_shot']}-shot, "
                            f"{results['config']['eval']['scoring']} scoring")
        table.add_column("")
        table.add_column("questions", justify="right")
        table.add_column("accuracy", justify="right")
        if len(results["subjects"]) <= MAX_SUBJECT_ROWS:
            for key, s in results["subjects"].items():
                table.add_row(key, str(s["questions"]), _pct(s["accuracy"]))
            table.add_section()
        for name, c in results["categories"].items():
            table.add_row(name, str(c["questions"]), _pct(c["accuracy"]))
        table.add_section()
        table.add_row("Average", str(results["questions"]), _pct(results["average"]), style="bold")
        console.print(table)
        return
    if "harness" in results:
        table = Table(title=f"lm-evaluation-harness, {results['config']['eval']['n_shot']}-shot")
        for column in ("task", "metric", "value"):
            table.add_column(column, justify="right" if column == "value" else "left")
        for task, metrics in results["harness"].items():
            for name, value in metrics.items():
                if isinstance(value, float) and "stderr" not in name:
                    table.add_row(task, name.removesuffix(",none"), f"{value:.4f}")
        console.print(table)
        return
    table = Table(title=f"{results['task']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in results.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else f"{value:,}")
    console.print(table)
