"""The `tuner space` commands: list, show and validate search-space files."""

from __future__ import annotations

import json
import sys

import click

from tuner.cli._group import TunerGroup


@click.group(cls=TunerGroup)
def space() -> None:
    """Inspect and validate search-space files (search_spaces/*.yaml).

    \b
    Examples:
      tuner space list
      tuner space show default
      tuner space validate my_space.yaml
    """


@space.command("list")
def space_list() -> None:
    """List the shipped search spaces, one line each.

    \b
    Examples:
      tuner space list
    """
    from tuner.space._space import load_space, shipped_spaces

    for path in shipped_spaces():
        first_line = load_space(str(path)).description.split(". ")[0].rstrip(".")
        click.echo(f"{path.stem:<20} {first_line}")


@space.command("validate")
@click.argument("files", nargs=-1, required=True, metavar="FILE|NAME...")
def space_validate(files: tuple[str, ...]) -> None:
    """Check search-space files (paths or shipped names); exit 1 if any is invalid.

    \b
    Examples:
      tuner space validate my_space.yaml
      tuner space validate default fine_tuning
    """
    from tuner.errors import SpaceError
    from tuner.training._hyperparams import check_space
    from tuner.space._space import load_space

    failed = 0
    for ref in files:
        try:
            loaded = load_space(ref)
            check_space(loaded)
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
    """Show a search space: each parameter's branches, ranges and conditions.

    \b
    Examples:
      tuner space show default
      tuner space show my_space.yaml --format json
    """
    from tuner.cli._render import space_table
    from tuner.space._space import load_space

    loaded = load_space(ref)
    if fmt == "json":
        click.echo(json.dumps(loaded.to_json(), indent=2))
    else:
        click.echo(space_table(loaded))
