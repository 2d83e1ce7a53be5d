"""The `TunerGroup` click group class: library errors become one `Error: ...` line and an exit code."""

from __future__ import annotations

import traceback
from typing import Any, TypeVar

import click

from tuner.errors import TunerError

Closeable = TypeVar("Closeable")


class TunerGroup(click.Group):
    """A click group that turns library errors into one `Error: ...` line and an exit code;
    with `--debug` (or TUNER_DEBUG=1) the error's traceback and its causes' go to stderr first."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TunerError as exc:
            if ctx.params.get("debug"):
                click.echo(error_traceback(exc), err=True, nl=False)
            error = click.ClickException(str(exc))
            error.exit_code = exc.exit_code
            raise error from None


def error_traceback(exc: BaseException) -> str:
    """The traceback of `exc` and of every exception that led to it, the first one first.

    Library code raises its one-line errors `from None` where the cause says nothing more to a
    user; debugging is the time it may, so contexts hidden that way are shown too.
    """
    seen, link = set(), exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__suppress_context__ = False
        link = link.__cause__ or link.__context__
    return "".join(traceback.format_exception(exc))


def closed_when_done(resource: Closeable) -> Closeable:
    """`resource` (an opened study or storage), closed when the command ends, however it ends:
    its database connections go then, not when the garbage collector finds them."""
    return click.get_current_context().with_resource(resource)
