"""The ``dcbench`` command line: a thin layer over the library API."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

import click
from tabulate import tabulate

import dcbench
from dcbench.allocator import retain_freed_memory
from dcbench.errors import DcbenchError

DEFAULT_STORE = "dcbench-store"


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _ints(text: str, option: str) -> list[int]:
    """``"1,10"`` or ``"0-4"`` → integers; a one-line usage error otherwise."""
    out: list[int] = []
    for part in _split(text):
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, part)
                out.extend(range(int(lo), int(hi) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise click.BadParameter(
                f"expected integers like 1,10 or 0-4, got {part!r}", param_hint=option
            ) from None
    return out


class _Cli(click.Group):
    """Turns library errors into one line on stderr and exit code 2, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DcbenchError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: finished records are kept; rerun to resume", err=True)
            sys.exit(130)


@click.group(cls=_Cli)
@click.version_option(dcbench.__version__, prog_name="dcbench")
@click.option("-v", "--verbose", is_flag=True, help="Log library messages.")
def main(verbose: bool) -> None:
    """dcbench: distil, evaluate and rank dataset-distillation methods."""
    retain_freed_memory()  # reuse freed activation memory (dcbench/allocator.py)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _tqdm_factory(enabled: bool) -> Callable | None:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    def make(desc: str, _total: int):
        bar = None

        def tick(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = tqdm(total=total, desc=desc, leave=False, unit="step", dynamic_ncols=True)
            bar.update(done - bar.n)
            if done >= total:
                bar.close()

        return tick

    return make


@main.command()
@click.option(
    "--methods", default=None, help="Comma-separated methods (default: every registered method)."
)
@click.option("--datasets", default="digits", show_default=True, help="Comma-separated datasets.")
@click.option("--ipc", "ipcs", default="1", show_default=True, help="Images per class, e.g. 1,10.")
@click.option("--models", default="convnet", show_default=True, help="Evaluation models.")
@click.option("--evaluators", default="hard", show_default=True, help="Evaluation protocols.")
@click.option("--distill-seeds", default="0", show_default=True, help="e.g. 0 or 0-2.")
@click.option(
    "--eval-seeds", default=None, help="e.g. 0-4 (default: the preset's number of seeds)."
)
@click.option("--preset", default="smoke", show_default=True, help="smoke, fast or paper.")
@click.option(
    "--set", "settings", multiple=True, help="Method setting key=value or method.key=value."
)
@click.option("--store", default=DEFAULT_STORE, show_default=True, type=click.Path(file_okay=False))
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--data-root", default=None, envvar="DCBENCH_DATA", help="Dataset folder [$DCBENCH_DATA]."
)
@click.option("--download", is_flag=True, help="Download missing datasets through torchvision.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
def run(methods, datasets, ipcs, models, evaluators, distill_seeds, eval_seeds, preset, settings,
        store, device, data_root, download, no_progress) -> None:  # fmt: skip
    """Distil and evaluate a grid, skipping what the store already holds, then print the
    leaderboard of what the grid covers."""
    from dcbench.method import METHODS, parse_overrides
    from dcbench.report import terminal_leaderboards
    from dcbench.runner import RunSpec
    from dcbench.runner import run as run_grid
    from dcbench.store import ResultStore

    spec = RunSpec(
        methods=_split(methods) if methods else METHODS.names(),
        datasets=_split(datasets),
        ipcs=_ints(ipcs, "--ipc"),
        models=_split(models),
        evaluators=_split(evaluators),
        distill_seeds=_ints(distill_seeds, "--distill-seeds"),
        eval_seeds=_ints(eval_seeds, "--eval-seeds") if eval_seeds else None,
        preset=preset,
        overrides=parse_overrides(list(settings)),
        device=device,
        data_root=data_root,
        download=download,
    )
    result_store = ResultStore(store)
    show = not no_progress and sys.stderr.isatty()

    def on_job(job, i, n):
        click.echo(f"[{i + 1}/{n}] {job.label}", err=True)

    summary = run_grid(spec, result_store, on_job=on_job, progress=_tqdm_factory(show))
    click.echo(
        f"{summary.done} evaluations run, {summary.skipped} already in {store}, "
        f"{len(summary.failed)} failed",
        err=True,
    )
    wanted = set(summary.keys)
    records = [r for r in result_store.records() if r["key"] in wanted]
    tables = terminal_leaderboards(records, _published(None, required=False))
    if tables:
        click.echo(f"\n{tables}")
    for line in summary.failed:
        click.echo(f"failed: {line}", err=True)
    if summary.failed:
        sys.exit(1)


@main.command("ls")
@click.argument(
    "what", type=click.Choice(["methods", "datasets", "models", "evaluators", "presets"])
)
def ls(what: str) -> None:
    """List registered plugins and presets."""
    import dcbench.datasets  # noqa: F401
    from dcbench.data import DATASETS
    from dcbench.evaluator import EVALUATORS
    from dcbench.method import METHODS
    from dcbench.models import MODELS
    from dcbench.protocol import PRESETS

    rows: list[tuple[str, str]] = []
    if what == "methods":
        for name in METHODS.names():
            cls = METHODS.get(name)
            rows.append((name, f"[{cls.label_kind}] {_first_line(cls.__doc__)}"))
    elif what == "datasets":
        rows = [
            (n, DATASETS.get(n).description)
            for n in DATASETS.names()
            if not DATASETS.get(n).test_only
        ]
    elif what == "models":
        rows = [(n, _first_line(getattr(MODELS.get(n), "__doc__", ""))) for n in MODELS.names()]
    elif what == "evaluators":
        for name in EVALUATORS.names():
            cls = EVALUATORS.get(name)
            rows.append((name, f"v{cls.protocol_version} {_first_line(cls.__doc__)}"))
    else:
        rows = [(n, PRESETS.get(n).description) for n in PRESETS.names()]
    click.echo(tabulate(rows, headers=[what[:-1], "description"], tablefmt="plain"))


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""


@main.command()
@click.argument("path", type=click.Path())
@click.option("--format", "fmt", default="auto", show_default=True,
              type=click.Choice(["auto", "dcbench", "dc", "mtt", "folder"]),
              help="File format.")  # fmt: skip
@click.option("--dataset", default=None, help="Dataset (default: the set's metadata).")
@click.option(
    "--decoder", default=None, help="Decoder for encoded releases (IDM/BACON: partition2x2)."
)
@click.option("--models", default="convnet", show_default=True)
@click.option("--evaluator", default="hard", show_default=True)
@click.option("--eval-seeds", default=None, help="e.g. 0-4 (default: the preset's seeds).")
@click.option("--preset", default="fast", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--data-root", default=None, envvar="DCBENCH_DATA")
def evaluate(path, fmt, dataset, decoder, models, evaluator, eval_seeds, preset, device,
             data_root) -> None:  # fmt: skip
    """Evaluate a distilled set file (ours or an imported DC/MTT/folder release)."""
    import numpy as np

    from dcbench.data import DATASETS, load_dataset
    from dcbench.distilled import DECODERS, read_distilled
    from dcbench.evaluator import EVALUATORS
    from dcbench.models import MODELS
    from dcbench.protocol import PRESETS
    from dcbench.protocol import eval_seed as derive
    from dcbench.runner import resolve_device

    budget = PRESETS.get(preset)
    ev = EVALUATORS.get(evaluator)()
    model_names = _split(models)
    for m in model_names:
        MODELS.get(m)
    info = load_dataset(dataset, data_root).info if dataset else None
    distilled = read_distilled(path, fmt, info)
    name = dataset or distilled.meta.get("dataset")
    if not name:
        raise DcbenchError(
            f"{path} does not say its dataset: pass --dataset ({', '.join(DATASETS.names())})"
        )
    data = load_dataset(name, data_root)
    if decoder:
        if decoder not in DECODERS:
            raise DcbenchError(f"unknown decoder {decoder!r}; valid choices: {', '.join(DECODERS)}")
        distilled.decoder = decoder
    distilled.validate(data.info)
    seeds = _ints(eval_seeds, "--eval-seeds") if eval_seeds else list(range(budget.num_eval_seeds))
    dev = resolve_device(device)
    rows = []
    for m in model_names:
        derived = [derive(name, ev.name, m, s) for s in seeds]
        metrics = ev.evaluate(distilled, data, m, seeds=derived, device=dev, budget=budget)
        accs = np.array([x["accuracy"] for x in metrics]) * 100
        rows.append(
            (
                m,
                f"{accs.mean():.2f} ± {accs.std():.2f}",
                len(accs),
                " ".join(f"{a:.2f}" for a in accs),
            )
        )
    click.echo(
        f"{path}: {distilled.num_images} images, dataset {name}, evaluator {ev.name}, "
        f"preset {preset}"
    )
    click.echo(tabulate(rows, headers=["model", "accuracy %", "n", "per seed"], tablefmt="github"))


@main.command()
@click.option("--store", default=DEFAULT_STORE, show_default=True, type=click.Path(file_okay=False))
@click.option("--failed", is_flag=True, help="List failed records with their reasons instead.")
def show(store: str, failed: bool) -> None:
    """Show the records of a store as leaderboard tables."""
    from dcbench.report import terminal_leaderboards
    from dcbench.store import ResultStore, records_to_frame

    if not Path(store).exists():
        raise DcbenchError(f"no store at {store} (run `dcbench run --store {store}` first)")
    scan = ResultStore(store, create=False).scan()
    for problem in scan.problems:
        click.echo(f"warning: {problem}", err=True)
    if failed:
        frame = records_to_frame(scan.records, include_failed=True)
        frame = frame[frame["status"] == "failed"] if not frame.empty else frame
        cols = ["method", "dataset", "ipc", "evaluator", "model", "eval_seed", "error"]
        click.echo(
            tabulate(frame[cols], headers="keys", tablefmt="github", showindex=False)
            if not frame.empty
            else "no failed records"
        )
        return
    tables = terminal_leaderboards(scan.records, _published(None, required=False))
    click.echo(tables or f"the store {store} holds no finished records")


def _published(path: str | None, *, required: bool = True):
    """The published numbers: ``path``, else this checkout's ``leaderboards/published.csv``
    (None when that file is absent and ``path`` was not given)."""
    from dcbench.published import DEFAULT_PUBLISHED, load_published

    if path:
        return load_published(path)
    if DEFAULT_PUBLISHED.is_file():
        try:
            return load_published(DEFAULT_PUBLISHED)
        except DcbenchError:
            if required:
                raise
    return None


_STORES_HELP = (
    "A store, or a folder whose sub-folders are stores (e.g. leaderboards/runs); repeatable. "
    f"[default: {DEFAULT_STORE}]"
)


@main.command()
@click.option(
    "--store", "stores", multiple=True, type=click.Path(file_okay=False), help=_STORES_HELP
)
@click.option(
    "--out",
    default=None,
    type=click.Path(file_okay=False),
    help="Output folder; without it the markdown report goes to stdout.",
)
@click.option(
    "--format",
    "formats",
    default=None,
    help="Comma-separated md, csv, html [default: all three with --out, md without].",
)
@click.option("--preset", "presets", default=None, help="Only these presets (comma-separated).")
@click.option("--datasets", default=None, help="Only these datasets (comma-separated).")
@click.option(
    "--published",
    default=None,
    envvar="DCBENCH_PUBLISHED",
    type=click.Path(dir_okay=False),
    help="Published numbers CSV [default: this checkout's leaderboards/published.csv; "
    "$DCBENCH_PUBLISHED].",
)
@click.option("--no-figures", is_flag=True, help="Skip the figures and image grids.")
def report(stores, out, formats, presets, datasets, published, no_figures) -> None:  # fmt: skip
    """Render leaderboards, cost tables, figures and an HTML page from stores alone."""
    from dcbench.report import FORMATS, build_report, load_stores, render_markdown, write_report

    wanted = _split(formats) if formats else (list(FORMATS) if out else ["md"])
    for fmt in wanted:
        if fmt not in FORMATS:
            raise DcbenchError(f"unknown format {fmt!r}; valid choices: {', '.join(FORMATS)}")
    if out is None and wanted != ["md"]:
        raise DcbenchError("--format csv/html write files: pass --out DIR (only md goes to stdout)")
    loaded = load_stores(stores or [DEFAULT_STORE])
    for problem in loaded.problems:
        click.echo(f"warning: {problem}", err=True)
    result = build_report(
        loaded,
        _published(published),
        presets=_split(presets) if presets else None,
        datasets=_split(datasets) if datasets else None,
    )
    if out is None:
        click.echo(render_markdown(result), nl=False)
        return
    written = write_report(result, out, wanted, figures=not no_figures)
    pages = [p.name for p in written if p.parent == Path(out)]
    figures = len(written) - len(pages)
    click.echo(f"wrote {', '.join(pages)} and {figures} figure files to {out}")


@main.command()
@click.option(
    "--store", "stores", multiple=True, type=click.Path(file_okay=False), help=_STORES_HELP
)
@click.option(
    "--baseline",
    default=None,
    type=click.Path(dir_okay=False),
    help="Baseline CSV to compare with (method, dataset, ipc, preset, model, mean, std).",
)
@click.option(
    "--write-baseline",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write the store's cells as a baseline CSV instead.",
)
@click.option(
    "--tolerance",
    type=float,
    default=None,
    help="Allowed drop in accuracy points [default: max(1, 3 × baseline std) per cell].",
)
def check(stores, baseline, write_baseline, tolerance) -> None:  # fmt: skip
    """Fail (exit 1) when a store's accuracy regressed below a committed baseline."""
    from dcbench.report import check_baseline, check_lines, load_stores, read_baseline
    from dcbench.report import write_baseline as write

    if (baseline is None) == (write_baseline is None):
        raise DcbenchError("pass exactly one of --baseline FILE and --write-baseline FILE")
    if tolerance is not None and tolerance < 0:
        raise DcbenchError(f"--tolerance must be >= 0 points, got {tolerance}")
    loaded = load_stores(stores or [DEFAULT_STORE])
    for problem in loaded.problems:
        click.echo(f"warning: {problem}", err=True)
    if write_baseline:
        table = write(loaded.records, write_baseline)
        click.echo(f"wrote {len(table)} baseline cells to {write_baseline}")
        return
    rows = check_baseline(loaded.records, read_baseline(baseline), tolerance)
    table, failures = check_lines(rows)
    click.echo(table)
    for line in failures:
        click.echo(line, err=True)
    if failures:
        click.echo(f"check failed: {len(failures)} of {len(rows)} baseline cells", err=True)
        sys.exit(1)
    click.echo(f"check passed: {len(rows)} baseline cells within tolerance")


if __name__ == "__main__":
    main()
