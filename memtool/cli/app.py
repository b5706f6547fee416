"""The `memtool` Typer application. Each command lives in its own module with a ``register(app)``."""

from __future__ import annotations

import importlib

import typer

from memtool import __version__

app = typer.Typer(
    name="memtool",
    help="Make large language models fit in less memory: quantize, evaluate, benchmark, fine-tune.\n\n"
    "Exit codes: 0 ok, 1 runtime error, 2 usage/bad input, 3 out of memory/resources.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Only commands that work are registered; a module missing from a partial install is skipped.
COMMANDS = ["eval", "profile", "bench", "inspect", "quantize", "convert", "generate", "finetune"]


def _version(value: bool) -> None:
    if value:
        print(f"memtool {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """memtool command line."""


for _name in COMMANDS:
    try:
        _mod = importlib.import_module(f"memtool.cli.{_name}_cmd")
    except ModuleNotFoundError as _e:
        if _e.name != f"memtool.cli.{_name}_cmd":
            raise
        continue
    _mod.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
