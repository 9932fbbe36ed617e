"""Running the real commands as users do (python train_*.py, accelerate launch): command lines and their output."""
import os
import subprocess
import sys

# A few seconds of training on the synthetic set: what the end-to-end tests run.
SMALL = ["--dataset", "synthetic", "--model", "simple_cnn", "--batch-size", "32", "--eval-batch-size", "256",
         "--linear-probe-epochs", "5", "--report-to", "none"]
# Small runs with the default tracker (W&B, offline here): SMALL without its --report-to none.
TRACKED = [a for a in SMALL if a not in ("--report-to", "none")]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = os.path.join(REPO, "tests")


def subprocess_pythonpath() -> str:
    """PYTHONPATH for the tests' subprocesses (launched probes, generated scripts, accelerate's workers): the
    project and these helpers first, as pytest's pythonpath (pyproject.toml) has them, then what was there."""
    return os.pathsep.join([REPO, TESTS, *filter(None, [os.environ.get("PYTHONPATH")])])


def run_script(args, cwd=REPO, timeout=600, env=None):
    """Runs a command line (e.g. accelerate launch ...) and returns the CompletedProcess."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


def python_script(script, *args, env=None):
    """One process without the launcher: the quickest real run of a script."""
    return run_script([sys.executable, os.path.join(REPO, script), *map(str, args)], env=env)


def accelerate_command(script, *args, num_processes=1):
    return ["accelerate", "launch", "--config_file", os.path.join(REPO, "accelerate_configs", "cpu.yaml"),
            "--num_processes", str(num_processes), "--num_cpu_threads_per_process", "1",
            os.path.join(REPO, script), *map(str, args)]


def accelerate_launch(script, *args, num_processes=1, **kw):
    return run_script(accelerate_command(script, *args, num_processes=num_processes), **kw)


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
