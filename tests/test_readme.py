"""The README against the code: its option tables name exactly the options the parsers take, with their
defaults where a table states them plainly; its quick start's first lines are the project's own."""
import os
import re
import subprocess
import sys

from ssl_scripts.config import build_parser
from conftest import REPO
from ssl_scripts.tasks import TASKS

README = open(os.path.join(REPO, "README.md")).read()


def option_rows() -> dict:
    """{(options of a row): default cell} of the README's Options tables."""
    section = README[README.index("## Options"):README.index("## Evaluation")]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `--"):
            rows[tuple(re.findall(r"--[a-z0-9-]+", cells[0]))] = cells[1]
    return rows


def parser_options() -> dict:
    """{--option: default} of the shared parser and every task's."""
    options = {}
    for task in TASKS.values():
        parser = build_parser("readme")
        task.add_options(parser)
        options.update({a.option_strings[0]: a.default for a in parser._actions
                        if a.option_strings and a.option_strings[0].startswith("--") and a.dest != "help"})
    return options


def test_the_options_tables_name_every_option_of_the_parsers_and_no_other():
    in_readme = {option for row in option_rows() for option in row}
    assert in_readme == set(parser_options())


def test_the_options_tables_state_the_parsers_plain_defaults():
    defaults, checked = parser_options(), 0
    for row, cell in option_rows().items():
        plain = re.fullmatch(r"`([^`]*)`", cell)  # e.g. `250 3`: one value per option of the row
        if plain and len(plain.group(1).split()) == len(row):
            for option, value in zip(row, plain.group(1).split()):
                assert str(defaults[option]) == value, (option, value, defaults[option])
                checked += 1
    assert checked >= 15


def test_the_quick_start_prints_the_projects_own_lines_first(tmp_path):
    command = re.search(r"## Quick start\n.*?```bash\n[^\n]*\n(python [^\n]*)\n", README, re.S).group(1)
    argv = command.replace("runs/quickstart", str(tmp_path / "quickstart")).split()[1:]
    result = subprocess.run([sys.executable, *argv, "--max-steps", "2", "--report-to", "none"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[0].startswith("data: "), result.stdout[:500]
    warnings = [line for line in result.stderr.splitlines() if "warn" in line.lower() or "not passed" in line]
    assert warnings == [], warnings  # nothing but the project's lines and its progress bar


def test_the_cpu_only_install_pins_what_the_package_pins():
    """The quick start's CPU-only line installs the torch and torchvision that pyproject.toml's dependencies then
    accept (a local version such as 2.14.1+cpu satisfies ==2.14.1), from PyTorch's CPU index."""
    pins = dict(re.findall(r'^ *"(torch|torchvision)==([^"]+)",$', open(os.path.join(REPO, "pyproject.toml")).read(),
                           re.M))
    start = README.index("## Quick start")
    quick_start = " ".join(README[start:README.index("```bash", start)].split())  # the text before its commands
    line = re.search(r"`(pip install torch[^`]*)`", quick_start).group(1)
    assert line == (f"pip install torch=={pins['torch']} torchvision=={pins['torchvision']} --index-url "
                    "https://download.pytorch.org/whl/cpu && pip install -r requirements.txt")
