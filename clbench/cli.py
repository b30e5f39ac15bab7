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
    html = "html"


class Uncertainty(str, Enum):
    interval = "interval"
    pm = "pm"
    none = "none"


class PlotFormat(str, Enum):
    png = "png"
    svg = "svg"


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
    launcher: str | None = typer.Option(
        None, "--launcher", help="inline (this process), local or slurm (submitit jobs); default: the suite's launcher"
    ),
    group_by: str | None = typer.Option(None, "--group-by", help="one job per encoder (default) or per cell"),
    partition: str | None = typer.Option(None, "--partition", help="SLURM partition"),
    gpus_per_node: int | None = typer.Option(None, "--gpus-per-node", help="GPUs per job"),
    time_min: int | None = typer.Option(None, "--time", help="time limit per job, minutes"),
    array_parallelism: int | None = typer.Option(None, "--array-parallelism", help="most SLURM jobs at once"),
    slurm_option: list[str] | None = typer.Option(None, "--slurm-option", help="key=value sbatch option (repeatable)"),
    wait: bool | None = typer.Option(None, "--wait/--no-wait", help="wait for the jobs (default: local waits)"),
    offline: bool = typer.Option(False, "--offline", help="never download zoo weights; fail fast naming the file"),
) -> None:
    """Run every (encoder, task) cell of SUITE; exit 1 when any cell failed."""
    if offline:  # read by clbench.zoo.download (and the zoo encoder's validation)
        import os

        os.environ["CLBENCH_OFFLINE"] = "1"
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
        from .launch import parse_slurm_options, resolve_launcher

        jobs = resolve_launcher(
            spec.launcher, type=launcher, group_by=group_by, partition=partition, gpus_per_node=gpus_per_node,
            time=time_min, array_parallelism=array_parallelism, slurm=parse_slurm_options(slurm_option or []),
        )
        if jobs.type != "inline":
            _submit(spec, jobs, only_encoder, only_task, force, device, cache_dir, wait)
            return
        from .distributed import is_main_process
        from .runner import Runner
        from .ui import summary_table

        main = is_main_process()  # under torchrun only rank 0 prints (and writes)
        out = console if main else Console(quiet=True)
        runner = Runner(spec, device=device, force=force, cache_dir=cache_dir, console=out)
        out.print(f"[bold]clbench[/bold] suite [cyan]{spec.name}[/cyan] on {runner.device}, "
                  f"cache {runner.cache.root}")
        summary = runner.run(only_encoder or None, only_task or None)
    except ClbenchError as err:
        _fail(str(err))
    out.print(summary_table(summary))
    if not summary.ok:
        if main:
            err_console.print(f"[red]{len(summary.failed)} cell(s) failed[/red]; results in {summary.results_dir}")
        raise typer.Exit(1)


def _submit(spec, jobs, only_encoder, only_task, force, device, cache_dir, wait) -> None:
    """Submit the pending cells as jobs; with waiting, print their states; exit 1 on a failure."""
    from .launch import cell_states, submit

    wait = jobs.type == "local" if wait is None else wait
    submitted = submit(spec, jobs, only_encoders=only_encoder or None, only_tasks=only_task or None, force=force,
                       device=device, cache_dir=cache_dir, wait=wait)
    if not submitted:
        console.print(f"every selected cell of suite {spec.name!r} is up to date in {spec.results_dir}; "
                      "nothing submitted", soft_wrap=True)
        return
    for s in submitted:
        cells = ", ".join(f"{e} × {t}" for e, t in s.cells)
        console.print(f"{jobs.type} job [cyan]{s.job_id}[/cyan]: {cells}" + (f" [red]died: {s.error}[/red]" if s.error else ""))
    if not wait:
        console.print(f"follow with: clbench status {spec.results_dir} --suite {spec.path}")
        return
    states = {(c.encoder, c.task): c for c in cell_states(spec.results_dir)}
    bad = [states.get(c) for s in submitted for c in s.cells]
    bad = [c for c in bad if c is None or c.state not in ("done", "skipped")]
    if bad:
        err_console.print(f"[red]{len(bad)} cell(s) not done[/red]; see clbench status {spec.results_dir}")
        raise typer.Exit(1)


@app.command()
def status(
    results_dir: Path = typer.Argument(..., help="results folder of a suite (e.g. results/quickstart)"),
    suite: Path | None = typer.Option(None, "--suite", help="suite file: also list its cells not started (missing)"),
) -> None:
    """Each cell's state: done, skipped, failed (reason), running (job, host, pid), stale, missing."""
    from rich.table import Table

    from .errors import ClbenchError
    from .launch import cell_states

    spec = None
    if suite is not None:
        from .suite import load_suite

        try:
            spec = load_suite(suite, check=False)
        except ClbenchError as err:
            _fail(str(err))
    if not results_dir.exists() and spec is None:
        _fail(f"{results_dir}: no such results folder")
    states = cell_states(results_dir, spec)
    table = Table(title=f"{results_dir}", title_justify="left")
    for col in ("encoder", "task", "state", "detail"):
        table.add_column(col)
    styles = {"done": "green", "failed": "red", "running": "cyan", "stale": "magenta", "missing": "yellow"}
    for c in states:
        table.add_row(c.encoder, c.task, f"[{styles.get(c.state, 'dim')}]{c.state}", c.detail[:160])
    console.print(table)
    counts: dict[str, int] = {}
    for c in states:
        counts[c.state] = counts.get(c.state, 0) + 1
    console.print(", ".join(f"{n} {state}" for state, n in counts.items()) or "no cells found")


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
    ci: Uncertainty = typer.Option(
        Uncertainty.interval,
        "--ci",
        help="uncertainty next to values: interval (low, high), pm (± half-width) or none",
    ),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="embed plots in the html report"),
    published: bool = typer.Option(False, "--published", help="add a '<task> (published)' column: zoo encoders' published numbers and our differences"),
) -> None:
    """Encoders x tasks table of main metrics from result files (never imports torch)."""
    from .results.formats import report as render_report

    if not results_dir.exists():
        _fail(f"{results_dir}: no such results folder")
    text = render_report(results_dir, format.value, uncertainty=ci.value, plots=plots, published=published)
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
    noise: bool = typer.Option(
        True, "--noise/--no-noise", help="also allow drops within the measured noise (CI of the difference)"
    ),
    level: float = typer.Option(0.95, "--level", help="confidence level of the noise CI"),
    seed: int = typer.Option(0, "--seed", help="seed of the bootstrap resamples"),
    output: Path | None = typer.Option(None, "--output", "-o", help="also write the markdown summary here"),
) -> None:
    """Exit 1 with a markdown summary when a main metric fell by more than max(--max-drop, noise), or a
    baseline cell is missing/failed."""
    from .results.gate import gate as run_gate

    for p in (results_dir, baseline):
        if not p.exists():
            _fail(f"{p}: no such results folder")
    try:
        outcome = run_gate(results_dir, baseline, max_drop=max_drop, noise=noise, level=level, seed=seed)
    except ValueError as err:
        _fail(str(err))
    text = outcome.markdown if outcome.markdown.endswith("\n") else outcome.markdown + "\n"
    if output is not None:
        from .results.store import atomic_write_text

        atomic_write_text(output, text)
    sys.stdout.write(text)
    if not outcome.passed:
        raise typer.Exit(1)


class CompareFormat(str, Enum):
    markdown = "markdown"
    json = "json"


@app.command()
def compare(
    a: Path = typer.Argument(..., help="results folder A (the reference)"),
    b: Path | None = typer.Argument(None, help="results folder B (omit with --encoders to compare within A)"),
    encoders: tuple[str, str] | None = typer.Option(
        None, "--encoders", help="compare encoder NAME_A against NAME_B (in A, or A and B)"
    ),
    format: CompareFormat = typer.Option(CompareFormat.markdown, "--format", "-f", help="output format"),
    level: float = typer.Option(0.95, "--level", help="confidence level of the CIs"),
    seed: int = typer.Option(0, "--seed", help="seed of the bootstrap resamples"),
    n_resamples: int = typer.Option(1000, "--resamples", help="bootstrap resamples"),
    output: Path | None = typer.Option(None, "--output", "-o", help="write to this file instead of stdout"),
) -> None:
    """Per-cell differences B - A of main metrics with CIs, p-values (paired bootstrap, McNemar for
    accuracy) and significance marks (* p<0.05, ** p<0.01). Never imports torch."""
    from .results.compare import compare as run_compare

    for p in (a, b):
        if p is not None and not p.exists():
            _fail(f"{p}: no such results folder")
    if b is None and not encoders:
        _fail("compare: give two results folders, or one folder and --encoders NAME_A NAME_B")
    try:
        out = run_compare(a, b, encoders=tuple(encoders) if encoders else None, level=level, seed=seed,
                          n_resamples=n_resamples)
    except ValueError as err:
        _fail(str(err))
    text = out.markdown() if format == CompareFormat.markdown else out.json()
    if output is not None:
        from .results.store import atomic_write_text

        atomic_write_text(output, text)
        console.print(f"wrote {output}")
    else:
        sys.stdout.write(text)


@app.command()
def plot(
    results_dir: Path = typer.Argument(..., help="results folder (e.g. results/quickstart)"),
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="folder for the plot files"),
    format: PlotFormat = typer.Option(PlotFormat.png, "--format", "-f", help="image format"),
) -> None:
    """Per-task bars, accuracy against k and label-efficiency curves (needs matplotlib)."""
    if not results_dir.exists():
        _fail(f"{results_dir}: no such results folder")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        _fail("clbench plot needs matplotlib: pip install 'clbench[plots]'")
    from .results.plots import write_plots

    written = write_plots(results_dir, output_dir, fmt=format.value)
    if not written:
        console.print(f"no plottable results in {results_dir}")
    for path in written:
        console.print(f"wrote {path}")


from .cli_zoo import app as zoo_app  # typer and rich only: no torch

app.add_typer(zoo_app, name="zoo")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
