"""The shared options (ssl_scripts/config.py) and their checks, for the training scripts and evaluate.py."""
import os
import re

import pytest

from ssl_scripts import UserError
from ssl_scripts.config import build_parser, require
from ssl_scripts.evaluation.options import dataset_checks
from ssl_scripts.data.image_data import make_synthetic
from helpers import parse


@pytest.mark.parametrize("option, value", [("--lr", "0"), ("--batch-size", "0"), ("--model", "vgg"),
                                           ("--dist-timeout", "0"), ("--linear-probe-epochs", "0")])
def test_invalid_options_are_user_errors(option, value):
    with pytest.raises(UserError, match=option.lstrip("-").split("-")[0]):
        parse([option, value])


def test_evaluate_checks_the_distributed_options_with_its_others():
    from ssl_scripts.commands import evaluate
    with pytest.raises(UserError, match="--dist-timeout must be > 0"):
        evaluate.parse_args(["--encoder", "some/final", "--dist-timeout", "0"])


def test_the_models_recipe_fills_only_what_was_not_given():
    args = parse(["--model", "simple_cnn", "--lr", "0.01"])
    assert (args.optimizer, args.lr, args.schedule) == ("adamw", 0.01, "constant")
    args = parse([])  # resnet18: RotNet's recipe
    assert (args.optimizer, args.lr, args.schedule) == ("sgd", 0.1, "step")


def test_options_are_checked_against_the_loaded_data():
    args = parse(["--knn-k", "50"])
    with pytest.raises(UserError, match="--knn-k 50 is larger than the evaluation's train split"):
        require(dataset_checks(args, make_synthetic(8, n_train=40, n_test=8)))
    require(dataset_checks(args, make_synthetic(8, n_train=50, n_test=8)))
    require(dataset_checks(args, None))  # --eval-dataset none: no k-NN


def test_the_parsed_options_refuse_a_change_and_a_derived_value_is_new_options():
    import pickle
    from ssl_scripts.commands import evaluate
    args = parse([])
    with pytest.raises(AttributeError, match="read-only once parsed"):
        args.lr = 0.5
    with pytest.raises(AttributeError, match="read-only once parsed"):
        del args.augment
    evaluated = evaluate.parse_args(["--encoder", "some/final"])
    with pytest.raises(AttributeError, match="read-only once parsed"):
        evaluated.image_size = 32  # the encoder's size is a new name (evaluate.main)
    assert args.replace(lr=0.5).lr == 0.5 and args.lr == 0.1
    copied = pickle.loads(pickle.dumps(args))  # as the processes exchange them
    assert copied == args
    with pytest.raises(AttributeError, match="read-only once parsed"):
        copied.lr = 0.5


def test_evaluate_parses_its_lists_and_decides_its_output():
    from ssl_scripts.commands import evaluate
    args = evaluate.parse_args(["--encoder", "some/final", "--blocks", "stem,layer1"])
    assert (args.blocks, args.classifiers) == (["stem", "layer1"], ["nonlinear", "linear"])
    assert args.output.endswith(os.path.join("some", "probes.json")) and os.path.isabs(args.output)
    assert evaluate.parse_args(["--encoder", "some/final", "--blocks", ""]).blocks is None  # every block
    with pytest.raises(UserError, match="--classifiers takes"):
        evaluate.parse_args(["--encoder", "some/final", "--classifiers", ""])


@pytest.mark.parametrize("dataset, evaluated", [("cifar10", "cifar10"), ("cifar100", "cifar100"), ("stl10", "stl10"),
                                                ("imagefolder", "imagefolder"), ("images", "none")])
def test_a_run_evaluates_on_its_own_dataset_when_it_has_labels_else_on_none(dataset, evaluated):
    assert parse(["--dataset", dataset]).eval_dataset == evaluated


def test_an_evaluation_set_needs_labels_and_a_folder_needs_its_path(capsys):
    with pytest.raises(SystemExit):
        build_parser("t").parse_args(["--eval-dataset", "images"])
    assert "invalid choice: 'images'" in capsys.readouterr().err
    with pytest.raises(UserError, match="--eval-dataset imagefolder needs --eval-data-dir"):
        parse(["--eval-dataset", "imagefolder"])


@pytest.mark.e2e
@pytest.mark.parametrize("command", ["train_rotation.py", "train_siamese.py", "evaluate.py", "-m bench.throughput",
                                     "-m bench.decode", "bench/data_scale.py"])
def test_every_command_prints_its_help(command):
    # argparse formats every help text only for --help: a stray % in one (e.g. "70%") crashed it there alone.
    import subprocess
    import sys
    from helpers import REPO
    result = subprocess.run([sys.executable, *command.split(), "--help"], capture_output=True, text=True, timeout=120,
                            cwd=REPO)
    assert result.returncode == 0 and result.stdout.startswith("usage:"), result.stderr[-2000:]


def _command_parses(command):
    """The parse of `command` (train_rotation.py, train_siamese.py, evaluate.py) in this process."""
    if command == "evaluate.py":
        from ssl_scripts.commands import evaluate
        return evaluate.parse_args
    return lambda argv: parse(argv, task=command[len("train_"):-len(".py")])


def _help_entries(text):
    """{--option: (is a flag, its help as one line)} of a --help text, and the options its usage requires."""
    usage = text.split("\n\n")[0]
    required = set(re.findall(r"(?<![\[\w-])(--[\w-]+)", usage))
    entries, current = {}, None
    for line in text.splitlines():
        head = re.match(r"  (?:-\w, )?(--[\w-]+)(?: (\S+))?(?:\s{2,}(.*)|$)", line)
        if head:
            current = head.group(1)
            entries[current] = [head.group(2) is None, head.group(3) or ""]
        elif current and line.startswith("   "):
            entries[current][1] += " " + line.strip()
        else:
            current = None
    return {option: (flag, " ".join(words.split())) for option, (flag, words) in entries.items()}, required


@pytest.mark.parametrize("command", ["train_rotation.py", "train_siamese.py", "evaluate.py"])
def test_every_option_of_every_command_shows_its_default_once(command, capsys):
    with pytest.raises(SystemExit) as stop:
        _command_parses(command)(["--help"])
    assert stop.value.code == 0
    entries, required = _help_entries(capsys.readouterr().out)
    assert len(entries) >= 15
    for option, (flag, words) in entries.items():
        assert "(default: None)" not in words and "(default: False)" not in words, (option, words)
        if option == "--help" or flag or option in required:
            continue
        # Said once: argparse's "(default: X)" or the help's own "default: ..." for a value filled in later.
        assert len(re.findall(r"\bdefault:", words, re.IGNORECASE)) == 1, (option, words)


@pytest.mark.parametrize("command", ["train_rotation.py", "train_siamese.py", "evaluate.py"])
def test_a_bad_choice_is_one_line_naming_the_option(command, capsys):
    import signal
    before = [signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)]
    with pytest.raises(SystemExit) as stop:
        _command_parses(command)(["--dataset", "cifar01"])
    assert stop.value.code == 2
    # parsed in this process: its signals are as they were (ignoring SIGTERM here would pass on to every child)
    assert [signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)] == before
    err = capsys.readouterr().err
    assert len(err.splitlines()) <= 2 and "--dataset" in err and "invalid choice: 'cifar01'" in err, err
