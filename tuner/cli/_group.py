"""The `TunerGroup` click group class: library errors become one `Error: ...` line and an exit code."""

from __future__ import annotations

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
