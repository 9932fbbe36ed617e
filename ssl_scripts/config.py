"""The parser every command builds on, parse_options (the shared options and a task's: parsed, their defaults
decided, checked, frozen) and require. Each group of options is its module's: see OPTION_GROUPS."""
import argparse
import re

from ssl_scripts import UserError
from ssl_scripts.runtime import cli
from ssl_scripts.data import options as data_options
from ssl_scripts.evaluation import options as evaluation_options
from ssl_scripts.models import options as model_options
from ssl_scripts.runtime import distributed
from ssl_scripts.training import options as training_options

# The shared options' owners, in --help's order: each has add_options(parser) and option_checks(args).
OPTION_GROUPS = (data_options, model_options, training_options, distributed, evaluation_options)


class HelpFormatter(argparse.HelpFormatter):
    """--help with every option's default said once: argparse's "(default: X)", unless the help says "default:" in
    words (a default filled in after parsing, None until then) or the option is a flag or required."""

    def _get_help_string(self, action):
        text = action.help or ""
        shown = action.default is not None and action.default is not False and action.default is not argparse.SUPPRESS
        if shown and not action.required and not re.search(r"%\(default\)|\bdefault:", text, re.IGNORECASE):
            text += " (default: %(default)s)"
        return text

    def _split_lines(self, text, width):
        """A help of several lines (a registry's entries, one per line) keeps them, each wrapped on its own."""
        split = super()._split_lines
        return [wrapped for line in text.splitlines() for wrapped in split(line, width)]


class OptionParser(argparse.ArgumentParser):
    """The parser of every command: HelpFormatter's --help, and a bad option one `error:` line (exit status 2)
    instead of argparse's whole usage before it."""

    def __init__(self, description: str, **options):
        super().__init__(description=description, formatter_class=HelpFormatter, **options)

    def error(self, message):
        # Every process parses the same command line, so all fail alike: said once.
        cli.end_with_user_error(f"{message}; see {self.prog} --help", agreed=True)


class Options(argparse.Namespace):
    """Parsed options, read-only: every reader sees what parsing decided, and a value derived from them is a new
    name (or a new Options, from replace)."""

    def __init__(self, **values):
        self.__dict__.update(values)

    def __setattr__(self, name, value):
        raise AttributeError(f"the options are read-only once parsed: give the value meant for {name!r} its own name")

    def __delattr__(self, name):
        raise AttributeError(f"the options are read-only once parsed: {name!r} stays")

    def replace(self, **values) -> "Options":
        """New options: these with `values` instead of theirs."""
        return Options(**{**vars(self), **values})


def decide_defaults(parsed: argparse.Namespace, *defaults, **values) -> Options:
    """The parsed options with `values` and what each of `defaults` (options -> {option: value} for options left
    unset) decides, in order (each sees the ones before), frozen: the one place a default is decided."""
    decided = {**vars(parsed), **values}
    for option_defaults in defaults:
        decided.update(option_defaults(Options(**decided)))
    return Options(**decided)


def parse_options(task, argv=None) -> Options:
    """The shared options and the task's (a tasks.task.Task subclass), their defaults decided (the task's recipe,
    e.g. a method's, then the model's, the data's, the plain ones, the task's), checked: one `error: ...` line saying
    what to do at the first bad one."""
    parser = build_parser(task.description)
    task.add_options(parser)
    args = decide_defaults(parser.parse_args(argv), task.recipe, model_options.option_defaults,
                           data_options.option_defaults, training_options.option_defaults, task.option_defaults,
                           task=task.name)
    require([check for group in OPTION_GROUPS for check in group.option_checks(args)] + task.option_checks(args))
    return args


def build_parser(description: str) -> argparse.ArgumentParser:
    """Options every task takes, each group added by its module. Defaults follow RotNet's CIFAR-10 recipe (Gidaris
    et al. 2018)."""
    parser = OptionParser(description)
    for group in OPTION_GROUPS:
        group.add_options(parser)
    return parser


def require(checks: list) -> None:
    """Stops at the first (ok, message) that is not ok, with its message: the fix, said to the user."""
    for ok, message in checks:
        if not ok:
            raise UserError(message)
