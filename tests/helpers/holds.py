"""What the diagnostics' environment variables give a test of a real run: a kill at a moment the run holds at
(SSL_SCRIPTS_HOLD), and the sample indices each step trained on (SSL_SCRIPTS_RECORD_INDICES)."""
import json
import os
import subprocess

from helpers.scripts import REPO


def killed_when_held(command, out, point, env=None, timeout=300):
    """Runs `command` (a training writing to OUTPUT_DIR `out`) until it holds at `point` (SSL_SCRIPTS_HOLD, e.g.
    "step@5": step 5 done; "checkpoint@8": step 8's checkpoint written but incomplete), then kills all its processes
    with SIGKILL: a kill at a known moment, not after a sleep. Fails with the run's output if it ends first."""
    import signal
    import time
    marker, log = f"{out}.hold", open(f"{out}.log", "w")
    process = subprocess.Popen(command, cwd=REPO, start_new_session=True, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", "SSL_SCRIPTS_HOLD": f"{point}:{marker}",
                                    **(env or {})})
    deadline = time.time() + timeout  # a bound on a hang, not a timing the test relies on
    while not os.path.exists(marker + ".held"):
        assert process.poll() is None and time.time() < deadline, open(f"{out}.log").read()[-3000:]
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    subprocess.run(["pkill", "-KILL", "-f", str(out)])  # launched workers may run in sessions of their own
    process.wait()
    log.close()


def steps_of(prefix, processes):
    """{step: the sample indices it trained on, rank by rank and micro-batch by micro-batch} from the index records
    (SSL_SCRIPTS_RECORD_INDICES) of every process of one or several runs."""
    per_rank = [[json.loads(line) for line in open(f"{prefix}.rank{rank}.jsonl")] for rank in range(processes)]
    steps = {}
    for records in per_rank:  # rank 0's micro-batches of a step, then rank 1's: the order of the global batches
        for record in records:
            steps.setdefault(record["step"], []).extend(record["indices"])
    return steps
