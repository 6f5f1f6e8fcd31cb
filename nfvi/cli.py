"""The ``nfvi`` command: a thin Typer app that hands every argument to Hydra."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import typer.core

import nfvi

app = typer.Typer(
    add_completion=True,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Variational inference with normalizing flows: train, evaluate, sweep.",
)

# every token after the command goes to Hydra unchanged, --help included
HYDRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


class HydraCommand(typer.core.TyperCommand):
    """A command whose arguments are Hydra overrides: the shell completes them from the configs
    (:mod:`nfvi.completion`)."""

    def shell_complete(self, ctx, incomplete: str):
        from typer._click.shell_completion import CompletionItem

        from nfvi.completion import candidates

        return [CompletionItem(c) for c in candidates(list(ctx.args), incomplete)]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nfvi {nfvi.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Variational inference with normalizing flows: train, evaluate, sweep."""


@app.command(cls=HydraCommand, context_settings=HYDRA_ARGS, add_help_option=False)
def train(ctx: typer.Context) -> None:
    """Train: `nfvi train flow=planar K=10`, `nfvi train -m K=0,2,4`; `--help` lists groups."""
    from nfvi.launch import run

    run("train", ctx.args)


@app.command("eval", cls=HydraCommand, context_settings=HYDRA_ARGS, add_help_option=False)
def eval_(ctx: typer.Context) -> None:
    """Evaluate a checkpoint: `nfvi eval checkpoint=RUN_DIR eval.iw_samples=5000`."""
    from nfvi.launch import run

    run("eval", ctx.args)


@app.command()
def report(
    paths: Annotated[list[Path], typer.Argument(help="Run directories or folders of runs.")],
    by: Annotated[str | None, typer.Option("--by", help="Group keys, e.g. K,flow.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv, markdown or json.")] = "table",
    out: Annotated[Path | None, typer.Option("-o", "--output", help="Where files go.")] = None,
    evaluations: Annotated[bool, typer.Option(
        "--eval", help="Use each run's newest `nfvi eval` of the test split for its test "
        "results (e.g. re-evaluated at a larger S).")] = False,
) -> None:
    """Compare runs: group by the config values that differ, aggregate seeds, draw figures."""
    from nfvi.errors import guard

    with guard():
        from nfvi.report.main import report as run_report

        code = run_report([str(p) for p in paths], by.split(",") if by else None, fmt,
                          str(out) if out else None, evaluations)
    raise typer.Exit(code)


data_app = typer.Typer(no_args_is_help=True, help="Datasets: list, fetch, import.")
app.add_typer(data_app, name="data")
DataDir = Annotated[str | None,
                    typer.Option("--data-dir", help="Default: $NFVI_DATA_DIR or data/.")]


def _data_dir(value: str | None) -> str:
    import os

    return value or os.environ.get("NFVI_DATA_DIR") or "data"


@data_app.command("list")
def data_list(data_dir: DataDir = None) -> None:
    """Every dataset: its files, present or missing, and where it is looked for."""
    from nfvi.errors import guard

    with guard():
        from nfvi.data.catalog import listing

        for r in listing(_data_dir(data_dir)):
            typer.echo(f"{r['dataset']:<20} {r['status']:<8} {r['where']}  ({r['files']}; "
                       f"{r['source']})")


@data_app.command("fetch")
def data_fetch(name: str, data_dir: DataDir = None) -> None:
    """Download NAME from its public home, verify it and store it in the data dir."""
    from nfvi.errors import guard

    with guard():
        from nfvi.data.catalog import fetch

        typer.echo(f"stored {fetch(name, _data_dir(data_dir))}")


@data_app.command("import")
def data_import(
    name: str,
    paths: Annotated[list[Path], typer.Argument(
        help="The file, or for a dataset of several files (static_mnist) the files or the "
             "directory holding them.")],
    data_dir: DataDir = None,
) -> None:
    """Use files you already have: verify PATH... as NAME's files and copy them to the data
    dir."""
    from nfvi.errors import guard

    with guard():
        from nfvi.data.catalog import import_file

        typer.echo(f"stored {import_file(name, paths, _data_dir(data_dir))}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
