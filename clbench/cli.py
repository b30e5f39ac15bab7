"""The ``clbench`` command line: parse, call, print. No evaluation logic lives here.

Start-up imports nothing heavy: ``report``, ``gate`` and ``compare`` never import torch.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(
    name="clbench",
    help="Evaluate contrastive and self-supervised encoders with standard protocols from one suite file.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


class Kind(str, Enum):
    encoders = "encoders"
    datasets = "datasets"
    tasks = "tasks"


class Format(str, Enum):
    markdown = "markdown"
    csv = "csv"
    latex = "latex"
    json = "json"


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@app.command()
def run(
    suite: Path = typer.Argument(..., help="suite YAML file"),
    only_encoder: list[str] | None = typer.Option(None, "--only-encoder", help="run only this encoder (repeatable)"),
    only_task: list[str] | None = typer.Option(None, "--only-task", help="run only this task (repeatable)"),
    force: bool = typer.Option(False, "--force", help="recompute cells whose results already exist"),
    device: str | None = typer.Option(None, "--device", help="override the suite's device (auto, cpu, cuda, cuda:N)"),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="feature cache folder (overrides the suite)"),
) -> None:
    """Run every (encoder, task) cell of SUITE; exit 1 when any cell failed."""
    from .errors import ClbenchError, ConfigError
    from .suite import DEVICE_RE, load_suite

    try:
        spec = load_suite(suite)
        for name in only_encoder or []:
            if name not in spec.encoders:
                raise ConfigError(f"--only-encoder: no encoder {name!r} (defined: {', '.join(spec.encoders)})")
        for name in only_task or []:
            if name not in {t.name for t in spec.tasks}:
                raise ConfigError(f"--only-task: no task {name!r} (defined: {', '.join(t.name for t in spec.tasks)})")
        if device is not None and not DEVICE_RE.match(device):
            raise ConfigError(f"--device: expected auto, cpu, cuda or cuda:N, got {device!r}")
        from .runner import Runner
        from .ui import summary_table

        runner = Runner(spec, device=device, force=force, cache_dir=cache_dir, console=console)
        console.print(f"[bold]clbench[/bold] suite [cyan]{spec.name}[/cyan] on {runner.device}, "
                      f"cache {runner.cache.root}")
        summary = runner.run(only_encoder or None, only_task or None)
    except ClbenchError as err:
        _fail(str(err))
    console.print(summary_table(summary))
    if not summary.ok:
        err_console.print(f"[red]{len(summary.failed)} cell(s) failed[/red]; results in {summary.results_dir}")
        raise typer.Exit(1)


@app.command()
def validate(suite: Path = typer.Argument(..., help="suite YAML file")) -> None:
    """Check SUITE (keys, plugin names, option types, references, files) without running it."""
    from .errors import ClbenchError
    from .runner import plan
    from .suite import load_suite

    try:
        spec = load_suite(suite)
    except ClbenchError as err:
        _fail(str(err))
    cells = plan(spec)
    console.print(
        f"[green]ok[/green] {suite}: suite {spec.name!r}, {len(spec.encoders)} encoder(s), "
        f"{len(spec.datasets)} dataset(s), {len(spec.tasks)} task(s), {len(cells)} cell(s)"
    )


@app.command("list")
def list_plugins(kind: Kind = typer.Argument(..., help="encoders, datasets or tasks")) -> None:
    """List the registered plugins of KIND with their options and defaults."""
    from rich.table import Table

    from .options import describe_options
    from .registry import REGISTRIES

    registry = REGISTRIES[kind.value]
    for name in registry.names():
        try:
            cls = registry.get(name)
        except Exception as err:  # a broken optional plugin must not hide the others
            console.print(f"[bold]{name}[/bold] [red](unavailable: {err})[/red]")
            continue
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        table = Table(title=f"{name}: {doc[0] if doc else ''}", title_justify="left", show_edge=False)
        for col in ("option", "type", "default", "help"):
            table.add_column(col)
        for row in describe_options(cls.Options):
            table.add_row(*row)
        console.print(table)
        console.print()


@app.command()
def report(
    results_dir: Path = typer.Argument(..., help="results folder (e.g. results/quickstart)"),
    format: Format = typer.Option(Format.markdown, "--format", "-f", help="output format"),
    output: Path | None = typer.Option(None, "--output", "-o", help="write to this file instead of stdout"),
) -> None:
    """Encoders x tasks table of main metrics from result files (never imports torch)."""
    from .results.formats import report as render_report

    if not results_dir.exists():
        _fail(f"{results_dir}: no such results folder")
    text = render_report(results_dir, format.value)
    if output is not None:
        from .results.store import atomic_write_text

        atomic_write_text(output, text)
        console.print(f"wrote {output}")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


@app.command()
def gate(
    results_dir: Path = typer.Argument(..., help="results folder of the candidate run"),
    baseline: Path = typer.Option(..., "--baseline", help="results folder of the baseline"),
    max_drop: float = typer.Option(0.0, "--max-drop", help="largest allowed fall of a main metric (absolute)"),
) -> None:
    """Exit 1 with a markdown summary when a main metric regressed or a baseline cell is missing/failed."""
    from .results.gate import gate as run_gate

    for p in (results_dir, baseline):
        if not p.exists():
            _fail(f"{p}: no such results folder")
    outcome = run_gate(results_dir, baseline, max_drop=max_drop)
    sys.stdout.write(outcome.markdown if outcome.markdown.endswith("\n") else outcome.markdown + "\n")
    if not outcome.passed:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
