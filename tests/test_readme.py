"""The README and docs/ against the code: the option tables (docs/options.md) name exactly the options the parsers
take, with their defaults where a table states them plainly; the quick start's first lines are the project's own;
the README's task example trains; every page the README links exists and every page of docs/ is linked."""
import os
import re
import subprocess
import sys
import types

import torch

import pytest

from ssl_scripts.config import build_parser
from helpers import REPO
from ssl_scripts.tasks import TASKS

README = open(os.path.join(REPO, "README.md")).read()
OPTIONS = open(os.path.join(REPO, "docs", "options.md")).read()


def option_rows() -> dict:
    """{(options of a row): default cell} of docs/options.md's tables."""
    rows = {}
    for line in OPTIONS.splitlines():
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
    in_docs = {option for row in option_rows() for option in row}
    assert in_docs == set(parser_options())


def test_the_options_tables_state_the_parsers_plain_defaults():
    defaults, checked = parser_options(), 0
    for row, cell in option_rows().items():
        plain = re.fullmatch(r"`([^`]*)`", cell)  # e.g. `250 3`: one value per option of the row
        if plain and len(plain.group(1).split()) == len(row):
            for option, value in zip(row, plain.group(1).split()):
                assert str(defaults[option]) == value, (option, value, defaults[option])
                checked += 1
    assert checked >= 15


@pytest.mark.e2e
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
                    "https://download.pytorch.org/whl/cpu && pip install -e .")


def test_the_readmes_task_example_registers_a_task_whose_batches_train():
    from ssl_scripts.models import encoders
    example = re.search(r"## Add a task.*?```python\n(.*?)```", README, re.S).group(1)
    namespace = {}
    exec(compile(example, "README.md: Add a task", "exec"), namespace)
    task_class = TASKS.pop(namespace["Flip"].name)  # registered by the example; not left for other tests
    assert task_class is namespace["Flip"]
    args = types.SimpleNamespace(augment="crop_flip")
    task = task_class(args, dataset=None, train_source=torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8))
    encoder = encoders.build_encoder("simple_cnn")
    model = encoders.EncoderWithHead(encoder, task_class.head(args, encoder))
    batch = task.make_batch(torch.arange(4), epoch=0)
    loss, metrics = task.step(model, batch)
    loss.backward()
    assert batch.inputs.shape == (4, 3, 32, 32) and set(batch.targets.tolist()) <= {0, 1}
    assert loss.item() > 0 and 0 <= metrics["acc"].item() <= 1
    assert encoder.blocks[0][0].weight.grad is not None  # the loss reaches the encoder


def linked_pages(text: str, folder: str) -> set:
    """The local files a markdown text links to, as paths relative to the repository."""
    targets = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text)
    return {os.path.relpath(os.path.normpath(os.path.join(folder, t)), REPO) for t in targets}


def test_every_page_linked_exists_and_every_reference_page_is_linked_from_the_readme():
    pages = {os.path.join("docs", name) for name in os.listdir(os.path.join(REPO, "docs")) if name.endswith(".md")}
    from_readme = linked_pages(README, REPO)
    assert pages <= from_readme, pages - from_readme
    for page in ["README.md", *pages]:
        text = open(os.path.join(REPO, page)).read()
        missing = [p for p in linked_pages(text, os.path.dirname(os.path.join(REPO, page)))
                   if not os.path.exists(os.path.join(REPO, p))]
        assert missing == [], (page, missing)
    assert "../shared" not in README


def test_the_readme_names_every_console_script_beside_its_script():
    scripts = re.findall(r"^(ssl-[a-z-]+) = ", open(os.path.join(REPO, "pyproject.toml")).read(), re.M)
    assert scripts
    for script in scripts:
        assert re.search(rf"^\| `[a-z_]+\.py` \| `{script}` \|", README, re.M), script
