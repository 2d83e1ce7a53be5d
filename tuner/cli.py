"""The `tuner` command line: a thin click layer that parses, calls the library, and prints."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from tuner.errors import TunerError


class TunerGroup(click.Group):
    """A click group that turns library errors into one `Error: ...` line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TunerError as exc:
            error = click.ClickException(str(exc))
            error.exit_code = exc.exit_code
            raise error from None


@click.group(cls=TunerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tuner")
def cli() -> None:
    """Hyperparameter search for transfer learning of torchvision image classifiers.

    \b
    Typical workflow:
      tuner space show default          # look at the search space
      tuner run --data DIR              # create a study and run trials here
      tuner worker --study NAME         # more workers join the same study
      tuner status / tuner best         # watch it, take the best configuration
    """


@cli.group(cls=TunerGroup)
def space() -> None:
    """Inspect and validate search-space files (search_spaces/*.yaml)."""


@space.command("list")
def space_list() -> None:
    """List the shipped search spaces, one line each."""
    from tuner.space import load_space, shipped_spaces

    for path in shipped_spaces():
        first_line = load_space(str(path)).description.split(". ")[0].rstrip(".")
        click.echo(f"{path.stem:<20} {first_line}")


@space.command("validate")
@click.argument("files", nargs=-1, required=True)
def space_validate(files: tuple[str, ...]) -> None:
    """Check FILES (paths or shipped names); exit 1 if any is invalid."""
    from tuner.errors import SpaceError
    from tuner.space import load_space

    failed = 0
    for ref in files:
        try:
            loaded = load_space(ref)
        except SpaceError as exc:
            failed += 1
            click.echo(f"Error: {exc}", err=True)
        else:
            click.echo(f"{loaded.source}: OK ({len(loaded.params)} parameters)")
    if failed:
        sys.exit(1)


@space.command("show")
@click.argument("ref", metavar="FILE|NAME")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="A readable table, or one JSON object for scripts.")
def space_show(ref: str, fmt: str) -> None:
    """Show a search space: each parameter's branches, ranges and conditions."""
    from tuner.render import space_table
    from tuner.space import load_space

    loaded = load_space(ref)
    if fmt == "json":
        click.echo(json.dumps(loaded.to_json(), indent=2))
    else:
        click.echo(space_table(loaded))


def main() -> None:
    cli(prog_name="tuner")
