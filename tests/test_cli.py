"""ssl_scripts/runtime/cli.py: how every command ends, seen from outside. Each case is a `python -c` process around
cli.run, so the exit status and the streams are the real ones (a test in this process would catch SystemExit)."""
import signal
import sys
import textwrap

import pytest

from helpers import run_script


def ended(body: str, rank: str = None):
    """A process whose main() runs `body` under cli.run: (exit status, stdout, stderr)."""
    code = "from ssl_scripts import Preempted, UserError\nfrom ssl_scripts.runtime import cli\n\n\ndef main():\n" + textwrap.indent(
        textwrap.dedent(body), "    ") + "\n\ncli.run(main)\n"
    result = run_script([sys.executable, "-c", code], timeout=120, env={"RANK": rank} if rank is not None else None)
    return result.returncode, result.stdout, result.stderr


def test_a_user_error_is_one_error_line_on_stderr_and_exit_status_2():
    status, out, err = ended('raise UserError("--data-dir /nowhere does not exist: pass the folder of the images")')
    assert (status, out) == (2, "")
    assert err == "error: --data-dir /nowhere does not exist: pass the folder of the images\n", err


def test_an_agreed_user_error_is_said_once_by_the_main_process_and_any_other_by_every_process():
    agreed = 'raise UserError("the checkpoint was written by another --model", agreed=True)'
    assert ended(agreed, rank="0") == (2, "", "error: the checkpoint was written by another --model\n")
    assert ended(agreed, rank="1") == (2, "", "")  # the main process says it
    # Not agreed: only this rank may know it, so it says it, on a line of its own (rank 0's bar may be mid-line).
    assert ended('raise UserError("cannot read shard 3")', rank="1") == (2, "", "\nerror: cannot read shard 3\n")


def test_a_preemption_is_one_line_on_stdout_and_exit_status_3_said_by_the_main_process():
    line = "stopping on SIGUSR1 at step 12: checkpoint saved, the same command resumes"
    assert ended(f'raise Preempted("{line}")') == (3, line + "\n", "")
    assert ended(f'raise Preempted("{line}")', rank="1") == (3, "", "")


def test_ctrl_c_without_a_stop_handler_is_one_line_and_exit_status_130():
    assert ended("raise KeyboardInterrupt") == (130, "", "interrupted (Ctrl-C): stopped\n")


def test_a_progress_bar_open_at_the_error_is_ended_so_the_error_starts_its_own_line():
    status, _, err = ended("""
        from tqdm.auto import tqdm
        bar = tqdm(total=10, desc="decoding")
        bar.update(3)
        raise UserError("image 4 is not an image: remove it or pass --skip-bad-images")
    """)
    assert status == 2 and "Traceback" not in err, err
    assert err.endswith("\nerror: image 4 is not an image: remove it or pass --skip-bad-images\n"), repr(err[-300:])


@pytest.mark.parametrize("body, status", [("pass", 0), ('raise UserError("bad option")', 2),
                                          ('raise Preempted("stopped at step 4")', 3)])
def test_a_stop_signal_arriving_as_the_command_ends_does_not_change_its_exit_status(body, status):
    # torchrun stops the other processes with SIGTERM once one has exited: at exit it is ignored, not a death by it.
    code = f"import atexit, os, signal\natexit.register(lambda: os.kill(os.getpid(), signal.SIGTERM))\n{body}"
    assert ended(code)[0] == status != -signal.SIGTERM
