"""Rich output: extraction progress with throughput, and the end-of-run summary table."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text


class ThroughputColumn(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} samples/s" if speed else "… samples/s", style="cyan")


def progress_factory(console):
    def make() -> Progress:
        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            ThroughputColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )

    return make


def summary_table(summary) -> Table:
    table = Table(title=f"suite {summary.suite}: {summary.results_dir}")
    for col in ("encoder", "task", "status", "main metric", "value", "note"):
        table.add_column(col)
    styles = {"ok": "green", "failed": "red", "skipped": "yellow", "up-to-date": "dim"}
    for c in summary.cells:
        value = f"{c.main_value:.4f}" if c.main_value is not None else ""
        note = (c.reason or "") if c.status in ("failed", "skipped") else ""
        table.add_row(c.encoder, c.task, f"[{styles.get(c.status, '')}]{c.status}", c.main_metric or "", value, note[:120])
    return table
