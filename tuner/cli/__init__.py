"""The `tuner` command line: a thin click layer that parses, calls the library, and prints.

Each command lives in the module named for what it is about: _study_commands (run, create, worker),
_read_commands (status, best, export, studies, report, dashboard), _manage_commands (extend, stop,
enqueue, delete), _ship_commands (retrain, evaluate, predict, models), _space_commands (space ...);
_options holds the options they share, _render their text output.
"""

from __future__ import annotations

from typing import Callable

import click

from tuner.cli._group import TunerGroup
from tuner.cli._manage_commands import delete, enqueue, extend, stop
from tuner.cli._read_commands import best, dashboard, export, report, status, studies
from tuner.cli._ship_commands import evaluate_command, models, predict, retrain
from tuner.cli._space_commands import space
from tuner.cli._study_commands import create, run, worker


# Every command, by module; `tuner --help` lists them sorted by name, whatever the order here.
COMMANDS = (run, create, worker, status, best, export, studies, report, dashboard,
            extend, stop, enqueue, delete, retrain, evaluate_command, predict, models, space)


@click.group(cls=TunerGroup, commands=COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="tuner")
@click.option("--debug", is_flag=True, envvar="TUNER_DEBUG",
              help="On an error, print its full traceback (and its causes') before the Error line "
                   "(env TUNER_DEBUG=1).")
def cli(debug: bool) -> None:
    """Hyperparameter search for transfer learning of image classifiers (torchvision, timm, your own).

    \b
    Typical workflow:
      tuner space show default            # look at the search space
      tuner run --data DIR                # create a study and run trials here
      tuner create --study s --data DIR   # or create it once, then ...
      tuner worker --study s              # ... start workers on many machines
      tuner status                        # watch it (or: tuner dashboard)
      tuner best --study s --format yaml  # take the best configuration
      tuner retrain --study s --out model # train the final model

    Storage defaults to sqlite:///tuner.db (or $TUNER_STORAGE); use
    postgresql+psycopg://user:pass@host/db for workers on many machines.

    An error is one `Error: ...` line; `tuner --debug COMMAND ...` (or TUNER_DEBUG=1) also
    prints its traceback, e.g. of your own MODULE:FUNCTION model that raised.

    \b
    Examples:
      tuner run --data digits --weights none --image-size 32 --n-trials 8 --max-epochs 3
      tuner COMMAND --help                # each command's options and examples
    """


def main() -> None:
    import warnings

    import optuna

    # Heartbeats, grouped TPE and metric names are "experimental" in Optuna; we rely on
    # them on purpose, and the warnings would bury our own output.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Our worker lines say what each trial did; Optuna's INFO lines would repeat them.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.showwarning = one_line_warnings(warnings.showwarning)
    cli(prog_name="tuner")


def one_line_warnings(show: Callable) -> Callable:
    """tuner's own warnings (skipped files) as one `Warning: ...` line, without Python's file and source line.

    Installed by main() only: in-process callers (tests, notebooks) keep Python's warnings to catch.
    """
    def shown(message, category, filename, lineno, file=None, line=None) -> None:
        if category.__module__.startswith("tuner."):
            click.echo(f"Warning: {message}", err=True)
        else:
            show(message, category, filename, lineno, file, line)

    return shown
