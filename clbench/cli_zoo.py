"""``clbench zoo list | show NAME | fetch NAME``: the method zoo on the command line (no torch)."""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console

app = typer.Typer(
    name="zoo",
    help="Released checkpoints of known methods: list, show one, fetch its weights.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _entry(name: str):
    from .errors import ConfigError
    from .zoo.catalogue import get_entry

    try:
        return get_entry(name)
    except ConfigError as err:
        _fail(err.message)


@app.command("list")
def list_entries(
    method: str | None = typer.Option(None, "--method", "-m", help="only entries whose method contains this text"),
) -> None:
    """Every zoo entry: method, variant, plugin, weights status, licence and headline number."""
    from rich.table import Table

    from .zoo.catalogue import load_catalogue

    table = Table(show_edge=False, title="clbench zoo (`clbench zoo show NAME` for everything)", title_justify="left")
    table.add_column("name", no_wrap=True)  # the name is what the user copies into a suite
    for col in ("method", "variant", "plugin", "weights", "licence", "published"):
        table.add_column(col)
    for entry in load_catalogue().values():
        if method and method.lower() not in entry.method.lower():
            continue
        first = next((p for p in entry.published if p.primary), None)
        headline = f"{first.protocol} {first.value:g}" if first else "-"
        table.add_row(entry.name, entry.method, entry.variant, entry.plugin or "-", entry.weights.status,
                      entry.licence, headline)
    console.print(table)


@app.command()
def show(name: str = typer.Argument(..., help="zoo entry name")) -> None:
    """All facts of one entry: architecture, layout, preprocessing, weights, licence, numbers, sources."""
    from .zoo.catalogue import STATUSES, encoder_spec, weights_path

    e = _entry(name)
    w = e.weights
    lines = [
        f"{e.name}: {e.method}, {e.variant}",
        f"  architecture   {e.architecture()}",
    ]
    if e.checks:
        lines.append(f"  checked        {', '.join(f'{k}={v}' for k, v in e.checks.items())} (after building)")
    lines += [
        f"  layout         {e.layout or '-'}",
        f"  preprocessing  {e.describe_preprocessing()}",
        f"  weights        {w.status}: {STATUSES.get(w.status, '')}",
    ]
    if w.url:
        lines.append(f"  url            {w.url}")
    if w.repo:
        lines.append(f"  hub            https://huggingface.co/{w.repo}" + (f" (folder {w.subfolder})" if w.subfolder else ""))
    if w.tag:
        lines.append(f"  open_clip tag  {w.tag}")
    if w.page:
        lines.append(f"  page           {w.page}")
    if w.how:
        lines.append(f"  how            {w.how}")
    if w.unverified:
        lines.append(f"  unverified     {w.unverified}")
    if w.checksum:
        lines.append(f"  checksum       {w.checksum} (published)")
    elif w.status == "download":
        lines.append("  checksum       none published (SHA-256 recorded on first download, checked after)")
    elif w.status in ("hub", "open_clip"):
        lines.append(f"  checksum       none published ({'the hub client' if w.status == 'hub' else 'open_clip'} verifies the files)")
    path = weights_path(e)
    if path is not None:
        lines.append(f"  cache file     {path} ({'present' if path.is_file() else 'not downloaded yet'})")
    lines.append(f"  licence        {e.licence}")
    if e.loadable:
        lines.append(f"  not loadable   {e.loadable}")
    else:
        try:
            plugin, opts = encoder_spec(e, {"checkpoint": "<your file>"} if w.status not in ("download", "hub", "open_clip") else None)
            lines.append(f"  suite          {{type: zoo, method: {e.name}}} -> {{type: {plugin}, "
                         + ", ".join(f"{k}: {v}" for k, v in opts.items()) + "}")
        except Exception as err:  # shown, never fatal
            lines.append(f"  suite          {err}")
    lines.append("  published:" if e.published else "  published      none confirmed")
    for p in e.published:
        mark = "" if p.primary else " (secondary report)"
        match = "" if p.task_type else " [not measured by a clbench task]"
        lines.append(f"    - {p.describe()}{mark}{match}\n      source: {p.source}")
    if e.sources:
        lines.append("  sources:")
        lines += [f"    - {s}" for s in e.sources]
    if e.notes:
        lines.append("  notes:")
        lines += [f"    - {n}" for n in e.notes]
    console.print("\n".join(lines), highlight=False, soft_wrap=True, markup=False)




@app.command()
def fetch(
    names: list[str] = typer.Argument(..., help="zoo entry name(s)"),
    offline: bool = typer.Option(False, "--offline", help="never download: only check what is in the cache"),
) -> None:
    """Download (resumably) and verify the weights of NAME into the clbench cache."""
    from .zoo.download import DownloadError, fetch_entry

    if offline:
        os.environ["CLBENCH_OFFLINE"] = "1"
    entries = [_entry(n) for n in names]
    failed = 0
    for e in entries:
        try:
            path = fetch_entry(e, progress=sys.stderr.isatty())
        except DownloadError as err:
            failed += 1
            err_console.print(f"[bold red]error:[/bold red] {e.name}: {err}", highlight=False, soft_wrap=True)
            continue
        console.print(f"[green]ok[/green] {e.name}: {path}", highlight=False)
    if failed:
        raise typer.Exit(1)
