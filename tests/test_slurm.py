"""The Slurm templates, submitted to a real local Slurm cluster (slurm/local_cluster.sh up: partition `debug`
with CPU nodes n0 and n1, partition `fakegpu` with g0 and g1 declared as 8-GPU nodes, for dry runs only).

The tests never start or install a cluster: without one that answers, the tests that need it are skipped with a
line saying how to run them, or fail where SSL_SCRIPTS_REQUIRE_SLURM is set (.ci/run sets it after starting one).
The last tests run slurm/node.sh directly with SLURM_* variables set; they need no cluster and always run."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from helpers import REPO, SMALL, free_port

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]

# The templates ask for 64 CPUs and 480 GB a node (8 GPUs); a CPU-only job says what it needs instead. The
# cluster's CPU nodes have one CPU each (two on a 2-core machine).
CPU_ONLY = ["--gpus-per-node=0", "--cpus-per-task=1", "--mem=2G"]

REQUIRE = "SSL_SCRIPTS_REQUIRE_SLURM"  # set (to 1) by .ci/run: no cluster is then a failure, not a skip
START = "bash slurm/local_cluster.sh up 2"  # root; installs Slurm with apt-get (Debian) when it is missing
NODES = {("n0", "debug"), ("n1", "debug"), ("g0", "fakegpu"), ("g1", "fakegpu")}


def _cluster_missing():
    """None when the local cluster answers with its nodes up, else what is missing, in a few words."""
    if not shutil.which("sinfo"):
        return "no sinfo on PATH"
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %P %T"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 30 s"
    if out.returncode != 0:
        return "sinfo: " + (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]
    up = {(f[0], f[1].rstrip("*")) for f in map(str.split, out.stdout.splitlines())
          if len(f) == 3 and f[2].startswith(("idle", "mixed", "alloc"))}
    down = sorted(NODES - up)
    return f"nodes not up: {', '.join(f'{n} ({p})' for n, p in down)}" if down else None


@pytest.fixture(scope="module")
def cluster():
    """The local cluster, which must answer already: nothing is started or installed here. Without one the tests
    that use it are skipped, or fail where the environment says they are required (CI)."""
    missing = _cluster_missing()
    if missing is None:
        return
    from helpers import required_by  # unset, "", "0", "false": not required
    if required_by(REQUIRE):
        pytest.fail(f"{REQUIRE} is set but no local Slurm cluster answers ({missing}): start one with `{START}` "
                    "(root; installs Slurm with apt-get on Debian)", pytrace=False)
    pytest.skip(f"no local Slurm cluster answers ({missing}); to run these tests start one with `{START}` (root; "
                f"installs Slurm with apt-get on Debian); {REQUIRE}=1 makes them fail instead of skip")


def sbatch(*args, wait=True, env=None):
    """Submits a job; with wait, returns once it has ended (polled here: `sbatch --wait` checks at 2, 10 and 42 s
    and every 32 s after, which a few seconds' job would spend mostly waiting) with returncode = its exit code."""
    result = subprocess.run(["sbatch", "--parsable", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                            timeout=60, env={**os.environ, **(env or {})})
    if wait and result.returncode == 0:
        job_id = result.stdout.strip().split(";")[0]
        deadline = time.time() + 900
        while job_fields(job_id).get("JobState") not in ENDED:
            assert time.time() < deadline, f"job {job_id} still {job_fields(job_id).get('JobState')}"
            time.sleep(0.5)
        fields = job_fields(job_id)
        result.returncode = 0 if fields["JobState"] == "COMPLETED" else int(fields["ExitCode"].split(":")[0]) or 1
        result.stderr += f"job {job_id}: {fields['JobState']} {fields['ExitCode']}\n"
    return result


ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
         "PREEMPTED"}


def job_fields(job_id):
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    return dict(f.split("=", 1) for f in out.split() if "=" in f)


def job_state(job_id):
    fields = job_fields(job_id)
    return fields.get("JobState"), int(fields.get("Restarts", 0))


def node_lines(text):
    """slurm/node.sh's line per node: {node name: (its SLURM_* values, its accelerate launch arguments)}."""
    nodes = {}
    for name, values, command in re.findall(r"^node (\S+) \(([^)]*)\): accelerate launch (.*)$", text, re.M):
        env = dict(v.split("=", 1) for v in values.split())
        words = command.split()
        options = {w: words[i + 1] for i, w in enumerate(words) if w.startswith("--") and i + 1 < len(words)}
        nodes[name] = (env, options)
    return nodes


def assert_launched_as_two_nodes(text, processes_per_node):
    """Each node read its own SLURM_NODEID; all agree on 2 machines and the first node as main process."""
    first = re.search(r"^job \d+ on 2 node\(s\) \((\S+)\), .* main process (\S+):(\d+),", text, re.M)
    assert first, text
    nodelist, main_ip, port = first.groups()
    first_node = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                                text=True, check=True).stdout.split()[0]
    assert main_ip == first_node
    nodes = node_lines(text)
    assert len(nodes) == 2, text
    ranks = {}
    for name, (env, options) in nodes.items():
        assert options["--machine_rank"] == env["SLURM_NODEID"], (name, env, options)
        ranks[env["SLURM_NODEID"]] = name
        assert options["--num_machines"] == "2"
        assert options["--num_processes"] == str(2 * processes_per_node)
        assert (options["--main_process_ip"], options["--main_process_port"]) == (main_ip, port)
    assert ranks == {"0": first_node, "1": next(n for n in nodes if n != first_node)}  # rank 0 = main process
    return nodes, int(port)


@pytest.mark.parametrize("template", ["rotation", "siamese"])
def test_template_runs_on_a_cpu_only_cluster(cluster, tmp_path, template):
    out, log = tmp_path / "out", tmp_path / "slurm-%j.out"
    result = sbatch(*CPU_ONLY, f"--output={log}", f"slurm/{template}.sh", *SMALL, "--max-steps", "30",
                    "--output-dir", out)
    logs = "".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert result.returncode == 0, result.stderr + logs
    assert json.loads((out / "results.json").read_text())["steps"] == 30
    assert "SLURM_RESTART_COUNT=0" in logs
    # the job's CPUs on the node, explicitly; the script is the one the template's name says
    assert f"srun --ntasks-per-node=1 --cpus-per-task=1 bash slurm/node.sh train_{template}.py" in logs


def test_template_trains_on_two_nodes(cluster, tmp_path):
    """sbatch --nodes=2: one srun task per node, ranks from srun, rendezvous on the first node, world size 2."""
    out, log = tmp_path / "out", tmp_path / "slurm.out"
    result = sbatch("--nodes=2", *CPU_ONLY, f"--output={log}", "slurm/rotation.sh", *SMALL, "--max-steps", "8",
                    "--output-dir", out)
    text = log.read_text(errors="replace") if log.exists() else "no log"
    assert result.returncode == 0, result.stderr + text
    nodes, _ = assert_launched_as_two_nodes(text, processes_per_node=1)
    assert set(nodes) == {"n0", "n1"}
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2 and results["steps"] == 8


@pytest.mark.parametrize("nodes", [1, 2])
def test_preemption_checkpoints_requeues_and_resumes(cluster, tmp_path, nodes):
    out, log = tmp_path / "out", tmp_path / "slurm.out"
    total = 160
    submitted = sbatch(f"--nodes={nodes}", *CPU_ONLY, f"--output={log}", "slurm/rotation.sh", *SMALL,
                       "--max-steps", total, "--log-every", "5", "--checkpoint-every", "100000",
                       "--output-dir", out, wait=False)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.5)
    assert metrics.exists(), log.read_text(errors="replace") if log.exists() else "no log"
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True)

    deadline = time.time() + 600
    while (state := job_state(job_id)[0]) != "COMPLETED":  # read once a round: it may complete between reads
        assert time.time() < deadline and state not in ENDED, log.read_text(errors="replace")
        time.sleep(0.5)
    text = log.read_text(errors="replace")
    assert job_state(job_id) == ("COMPLETED", 1), text
    assert "SLURM_RESTART_COUNT=1" in text and "stopping on SIGUSR1 at step" in text
    stopped = int(text.split("stopping on SIGUSR1 at step ")[1].split(":")[0])
    assert 0 < stopped < total
    runs = re.split(r"(?m)^(?=job \d+ on )", text)[1:]  # launch.sh's first line starts each run's log
    assert len(runs) == 2 and "SLURM_RESTART_COUNT=1" in runs[1], text
    # slurm/node.sh passed the stop on to the training, whatever Slurm's ProctrackType (.ci/run tests pgid too)
    assert runs[0].count(": SIGUSR1 forwarded to the training processes (pids ") == nodes, runs[0]
    assert f"at step {stopped} " in runs[1]  # the second run resumed right there
    if nodes == 2:  # both runs on both nodes, each node with its own rank
        for run in runs:
            assert_launched_as_two_nodes(run, processes_per_node=1)
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == total and results["world_size"] == nodes  # as many steps as uninterrupted


# A stand-in for the training (launched like it: srun, slurm/node.sh, accelerate launch) that gets the USR1 but never
# finishes its checkpoint, as a slow save would; once requeued (SLURM_RESTART_COUNT=1) it finishes at once.
STUCK_TRAINING = """import json, os, signal, sys, time
out = sys.argv[sys.argv.index("--output-dir") + 1]
os.makedirs(out, exist_ok=True)
if int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0:
    json.dump({"steps": 0}, open(os.path.join(out, "results.json"), "w"))
    print("stuck training: requeued, finished", flush=True)
    sys.exit(0)
signal.signal(signal.SIGUSR1, lambda *_: print("stuck training: got SIGUSR1, still busy", flush=True))
open(os.path.join(out, "started"), "w").close()
while True:
    time.sleep(1)
"""


def test_a_training_that_does_not_stop_in_time_is_requeued_after_the_grace_period(cluster, tmp_path):
    """Slurm kills a job at its time limit, 2-3 minutes after the USR1: a batch shell that waited for the training
    to stop would never requeue it. launch.sh waits STOP_GRACE_S at most, then requeues anyway."""
    out, log = tmp_path / "out", tmp_path / "slurm.out"
    training = tmp_path / "stuck_training.py"
    training.write_text(STUCK_TRAINING)
    template = tmp_path / "rotation.sh"  # the real template and its #SBATCH lines, launching the stand-in
    original = open(os.path.join(REPO, "slurm", "train.sh")).read()
    assert '"train_$task.py"' in original
    template.write_text(original.replace('"train_$task.py"', str(training)))
    submitted = sbatch(*CPU_ONLY, f"--output={log}", template, "--output-dir", out, wait=False,
                       env={"STOP_GRACE_S": "3"})
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    read = lambda: log.read_text(errors="replace") if log.exists() else "no log"  # noqa: E731
    try:
        deadline = time.time() + 120
        while not (out / "started").exists():
            assert time.time() < deadline and job_state(job_id)[0] not in ENDED, read()
            time.sleep(0.2)
        subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True)
        signalled = time.time()
        while "requeueing job" not in read():
            assert time.time() < deadline and job_state(job_id)[0] not in ENDED, read()
            time.sleep(0.2)
        waited = time.time() - signalled
        while job_state(job_id)[0] != "COMPLETED":
            assert time.time() < deadline and job_state(job_id)[0] not in ENDED - {"COMPLETED"}, read()
            time.sleep(0.5)
    finally:  # a job left running (the test failed) would hold a node
        subprocess.run(["scancel", job_id], capture_output=True)
    text = read()
    assert job_state(job_id) == ("COMPLETED", 1), text
    # STOP_GRACE_S=3 (on the shell's whole seconds) honoured, not the default 90: bounds far from both
    assert 2 <= waited < 45, (waited, text)
    runs = re.split(r"(?m)^(?=job \d+ on )", text)[1:]
    assert len(runs) == 2 and "SLURM_RESTART_COUNT=1" in runs[1], text
    first = runs[0]
    # the training got the USR1 and was still running when the batch shell gave up on it and requeued the job
    assert "stuck training: got SIGUSR1, still busy" in first
    assert f"the training did not stop within STOP_GRACE_S=3 s of SIGUSR1: requeueing job {job_id} anyway; it " \
           f"resumes from the newest complete checkpoint in {out}" in first.splitlines(), first
    assert "stuck training: requeued, finished" in runs[1]
    assert json.loads((out / "results.json").read_text()) == {"steps": 0}


def check(*args):
    return subprocess.run(["bash", "slurm/check.sh", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


def test_check_says_why_a_job_cannot_start_and_what_to_add(cluster):
    """The templates' defaults on the CPU nodes (1 CPU each): without GPUs the job would pend forever (reason
    PartitionConfig); slurm/check.sh says why and which options make it fit, checked by sbatch --test-only."""
    mem = subprocess.run(["sinfo", "-h", "-N", "-p", "debug", "-o", "%m"], capture_output=True, text=True,
                         check=True).stdout.split()[0]
    result = check("--gpus-per-node=0", "slurm/rotation.sh", "--max-steps", "30")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "slurm/check.sh: Slurm cannot start this job (allocation failure: Requested node configuration is not "
        "available): it asks 1 node(s) of partition debug for 64 CPUs, 480G memory and 0 GPUs each; the partition "
        f"has 2 node(s), the best 1 with 1 CPUs, {mem}M and 0 GPUs",
        f"slurm/check.sh: add before the template: --cpus-per-task=1 --mem={mem}M (sbatch --test-only accepts the "
        "job with them)"]
    # with the GPUs of the defaults as well, and a 3-node job on the 2 nodes of fakegpu
    result = check("slurm/siamese.sh")
    assert result.returncode == 1 and result.stdout.splitlines()[-1].startswith(
        f"slurm/check.sh: add before the template: --gpus-per-node=0 --cpus-per-task=1 --mem={mem}M (sbatch "
        "--test-only accepts"), result.stdout
    result = check("--partition", "fakegpu", "-N", "3", "slurm/rotation.sh")
    assert result.returncode == 1 and "add before the template: --nodes=2 (sbatch --test-only accepts" in result.stdout
    # what fits is said to fit, and nothing is submitted
    jobs_before = subprocess.run(["squeue", "-h", "-o", "%A"], capture_output=True, text=True).stdout
    for args in ((*CPU_ONLY, "slurm/rotation.sh"), ("--partition=fakegpu", "--nodes=2", "slurm/rotation.sh")):
        result = check(*args)
        assert result.returncode == 0 and result.stdout.startswith("slurm/check.sh: Slurm can start this job ("), \
            result.stdout + result.stderr
    assert subprocess.run(["squeue", "-h", "-o", "%A"], capture_output=True, text=True).stdout == jobs_before


# A SETUP_ENV file as a cluster's would be (`module load ...`, `source venv/bin/activate`): it puts its own
# bin/ (an `accelerate` that a dry run only finds, never runs) first on PATH, and says so in the job's log.
SETUP_ENV = """export PATH={bin}:$PATH
echo "setup: PATH starts with {bin}"
"""


@pytest.mark.parametrize("task, gpu_options, gpus, cpus, mem", [
    ("rotation", (), 8, 64, "480G"),  # the template's defaults
    # a cluster where the submitting shell's environment is not copied: the job gets only what --export names
    ("siamese", ("--gpus-per-node=4", "--cpus-per-task=32", "--mem=240G", "--export=DRY_RUN,SETUP_ENV"), 4, 32,
     "240G"),
])
def test_dry_run_of_a_two_node_gpu_job(cluster, tmp_path, task, gpu_options, gpus, cpus, mem):
    """What a 2-node GPU job gets from Slurm (nodes declared with 8 GPUs) and the command each node would run;
    the task is the name the one template was submitted under. The SETUP_ENV file set up every node's PATH."""
    log, bin_dir, setup = tmp_path / "slurm.out", tmp_path / "bin", tmp_path / "setup.sh"
    bin_dir.mkdir()
    (bin_dir / "accelerate").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "accelerate").chmod(0o755)
    setup.write_text(SETUP_ENV.format(bin=bin_dir))
    result = sbatch("--partition=fakegpu", "--nodes=2", *gpu_options, f"--output={log}", f"slurm/{task}.sh",
                    "--model", "resnet18", "--output-dir", tmp_path / "out",
                    env={"DRY_RUN": "1", "SETUP_ENV": str(setup)})
    text = log.read_text(errors="replace") if log.exists() else "no log"
    assert result.returncode == 0, result.stderr + text
    assert text.splitlines()[:1] == [f"setup: PATH starts with {bin_dir}"], text  # before anything else ran
    assert sorted(re.findall(r"^node (\S+): accelerate is (\S+)$", text, re.M)) == [
        (name, str(bin_dir / "accelerate")) for name in ("g0", "g1")], text
    job_id = result.stdout.strip().split(";")[0]

    job = job_fields(job_id)  # what sbatch asked for and Slurm allocated
    assert (job["NumNodes"], job["NumCPUs"], job["CPUs/Task"]) == ("2", str(2 * cpus), str(cpus))
    assert job["MinMemoryNode"] == mem and job["TresPerNode"] == f"gres:gpu:{gpus}"

    assert f"srun --ntasks-per-node=1 --cpus-per-task={cpus} bash slurm/node.sh train_{task}.py" in text
    nodes, port = assert_launched_as_two_nodes(text, processes_per_node=gpus)
    low_ephemeral = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    assert port == 10000 + int(job_id) % 19500 and 10000 <= port < min(29500, low_ephemeral)
    for env, options in nodes.values():
        assert env["SLURM_GPUS_ON_NODE"] == str(gpus) and env["SLURM_CPUS_PER_TASK"] == str(cpus)
        assert options["--config_file"] == "accelerate_configs/multi_node.yaml"
        assert options["--num_cpu_threads_per_process"] == str(cpus // gpus)
    assert text.count("dry run (DRY_RUN=1), not started") == 2 and "train:" not in text
    assert not (tmp_path / "out").exists()


def test_the_account_and_partition_placeholders_once_filled_in_are_the_jobs(cluster, tmp_path):
    """The template's ##SBATCH placeholders as a user fills them in (one # deleted, the values set), in a copy
    submitted under the task's name (REPO_DIR says where the repository is): the job runs there, as that account."""
    template = open(os.path.join(REPO, "slurm", "train.sh")).read()
    for placeholder in ("##SBATCH --account=YOUR_ACCOUNT", "##SBATCH --partition=YOUR_GPU_PARTITION"):
        assert placeholder in template
    filled = template.replace("##SBATCH --account=YOUR_ACCOUNT", "#SBATCH --account=vision-lab").replace(
        "##SBATCH --partition=YOUR_GPU_PARTITION", "#SBATCH --partition=fakegpu")
    (tmp_path / "rotation.sh").write_text(filled)
    log = tmp_path / "slurm.out"
    result = sbatch(f"--output={log}", tmp_path / "rotation.sh", "--output-dir", tmp_path / "out",
                    env={"DRY_RUN": "1", "REPO_DIR": REPO})
    text = log.read_text(errors="replace") if log.exists() else "no log"
    assert result.returncode == 0, result.stderr + text
    job = job_fields(result.stdout.strip().split(";")[0])
    assert (job["Partition"], job["Account"]) == ("fakegpu", "vision-lab"), job
    assert "dry run (DRY_RUN=1), not started" in text and "train_rotation.py" in text, text


@pytest.mark.parametrize("template, task", [("rotation", "train_rotation.py"), ("siamese", "train_siamese.py")])
def test_a_template_run_outside_a_job_says_to_submit_it(template, task):
    """`bash slurm/rotation.sh ...` on a login node or a laptop: one line saying how to submit it (or run the
    training here), exit status 2, nothing started; no cluster needed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    result = subprocess.run(["bash", f"slurm/{template}.sh", "--model", "resnet18", "--run-name", "a b"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (2, ""), result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"slurm/{template}.sh is a Slurm batch script: submit it with `sbatch [sbatch options] slurm/{template}.sh "
        f"--model resnet18 --run-name a\\ b` (for a run on this machine: python {task} --model resnet18 --run-name "
        "a\\ b)"], result.stderr


@pytest.mark.parametrize("hook", ["missing", "failing", "default"])
def test_a_setup_env_that_is_missing_or_fails_stops_the_job_saying_so(tmp_path, hook):
    """The batch shell as Slurm starts it (SLURM_JOB_ID set), here without a cluster: a SETUP_ENV file that is not
    there, or that fails (a `module load` of a module the cluster lacks), stops the job before anything runs;
    without SETUP_ENV, the repository's slurm/env.sh is that file (REPO_DIR here: a copy with one)."""
    setup = tmp_path / "slurm" / "env.sh" if hook == "default" else tmp_path / "setup.sh"
    if hook != "missing":
        setup.parent.mkdir(exist_ok=True)
        setup.write_text("echo 'module: no such module' >&2\nfalse\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "SETUP_ENV"}
    env.update(SLURM_JOB_ID="1", SLURM_SUBMIT_DIR=REPO)
    if hook == "default":
        env["REPO_DIR"] = str(tmp_path)
    else:
        env["SETUP_ENV"] = str(setup)
    result = subprocess.run(["bash", "slurm/rotation.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=60)
    assert (result.returncode, result.stdout) == (2, ""), result.stdout + result.stderr
    assert result.stderr.splitlines() == ({
        "missing": [f"error: SETUP_ENV={setup}: no such file (a path from {REPO}): fix the path or unset SETUP_ENV"],
        "failing": ["module: no such module", f"error: sourcing {setup} failed (exit status 1): fix it"],
        "default": ["module: no such module", f"error: sourcing {setup} failed (exit status 1): fix it"]}[hook])


def test_multi_node_launch_without_main_process_ip_fails_fast(tmp_path):
    """multi_node.yaml has no default address; slurm/node.sh refuses a multi-node launch without one."""
    config = yaml.safe_load(open(os.path.join(REPO, "accelerate_configs", "multi_node.yaml")))
    assert "main_process_ip" not in config
    env = {k: v for k, v in os.environ.items() if k not in ("MAIN_PROCESS_IP", "MAIN_PROCESS_PORT")}
    env.update(SLURM_NNODES="2", SLURM_NODEID="1", SLURM_GPUS_ON_NODE="8", MAIN_PROCESS_PORT="12345")
    start = time.time()
    result = subprocess.run(["bash", "slurm/node.sh", "train_rotation.py", "--output-dir", str(tmp_path)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert time.time() - start < 10
    assert result.returncode == 2 and "needs MAIN_PROCESS_IP and MAIN_PROCESS_PORT" in result.stderr
    assert "accelerate launch" not in result.stdout  # refused before anything started


def test_two_node_launch_command_trains_with_world_size_two(tmp_path):
    """slurm/node.sh, as srun starts it on each node, run here as node 0 and node 1 of a 2-node job."""
    out = tmp_path / "out"
    env = {**os.environ, "SLURM_NNODES": "2", "MAIN_PROCESS_IP": "127.0.0.1", "WANDB_MODE": "offline",
           "MAIN_PROCESS_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    env.pop("SLURM_GPUS_ON_NODE", None)
    nodes = [subprocess.Popen(["bash", "slurm/node.sh", "train_rotation.py", *SMALL, "--max-steps", "8",
                               "--output-dir", str(out)], cwd=REPO, env={**env, "SLURM_NODEID": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(logs)[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2 and results["steps"] == 8


# A stand-in for the training, launched like it (slurm/node.sh, accelerate launch, torchrun): it notes its session,
# counts the USR1s it gets (as the training's StopSignals note them) and exits 0 once one came.
STOP_TRAINING = """import os, signal, sys, time
out = sys.argv[sys.argv.index("--output-dir") + 1]
rank = os.environ["RANK"]
got = []
signal.signal(signal.SIGUSR1, lambda *_: got.append(1))
open(os.path.join(out, f"ready-{rank}"), "w").write(f"{os.getpid()} {os.getsid(0)}")
deadline = time.time() + 60
while not got and time.time() < deadline:
    time.sleep(0.1)
time.sleep(1)  # a second USR1 (Slurm's own, under linuxproc or cgroup) lands in here
open(os.path.join(out, f"usr1-{rank}"), "w").write(str(len(got)))
"""


@pytest.mark.parametrize("proctrack", ["pgid", "linuxproc"])
def test_node_forwards_usr1_to_training_processes_in_sessions_of_their_own(tmp_path, proctrack):
    """slurm/node.sh as srun's task, in its own process group, with two training processes, which torchrun starts
    in sessions of their own. The USR1 goes as Slurm sends it: proctrack/pgid to the task's process group only,
    linuxproc (like cgroup) to every process of the step, the training processes too (they then get it twice)."""
    training = tmp_path / "stop_training.py"
    training.write_text(STOP_TRAINING)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "SLURM_NNODES": "1", "PROCESSES_PER_NODE": "2", "OMP_NUM_THREADS": "1"}
    for name in ("SLURM_NODEID", "SLURM_GPUS_ON_NODE", "SLURM_CPUS_PER_TASK", "MAIN_PROCESS_IP", "MAIN_PROCESS_PORT"):
        env.pop(name, None)
    node = subprocess.Popen(["bash", "slurm/node.sh", str(training), "--output-dir", str(out)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    workers = {}
    try:
        deadline = time.time() + 120
        while len(workers) < 2:
            assert time.time() < deadline and node.poll() is None, node.communicate(timeout=60)[0]
            workers = {p.name: p.read_text().split() for p in out.glob("ready-*")}
            workers = {rank: ids for rank, ids in workers.items() if len(ids) == 2}
            time.sleep(0.2)
        for pid, session in workers.values():  # torchrun's doing: out of reach of a process-group signal
            assert int(session) == int(pid) != node.pid
        os.killpg(node.pid, signal.SIGUSR1)
        if proctrack == "linuxproc":
            for pid, _ in workers.values():
                os.kill(int(pid), signal.SIGUSR1)
        log = node.communicate(timeout=120)[0]
    finally:  # stand-ins that never got the signal would wait their 60 s
        if node.poll() is None:
            for pid, _ in workers.values():
                subprocess.run(["kill", pid], capture_output=True)
            os.killpg(node.pid, signal.SIGKILL)
    assert node.returncode == 0, log  # the launcher ignored the USR1
    counts = {p.name: int(p.read_text()) for p in out.glob("usr1-*")}
    assert counts.keys() == {"usr1-0", "usr1-1"} and all(counts.values()), (counts, log)
    assert ": SIGUSR1 forwarded to the training processes (pids " in log, log


NO_CONTROLLER = "slurm_load_partitions: Unable to contact slurm controller (connect failure)"


def run_pytest_without_a_cluster(tmp_path, slurm_installed, require):
    """This file's dry-run tests (they use the cluster fixture, and nothing else runs) in a pytest of their own
    where no cluster answers: no Slurm on PATH at all, or a sinfo that reaches no controller (hiding a real one)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    path = str(bin_dir)
    if slurm_installed:
        (bin_dir / "sinfo").write_text(f"#!/bin/sh\necho '{NO_CONTROLLER}' >&2\nexit 1\n")
        (bin_dir / "sinfo").chmod(0o755)
        path += os.pathsep + os.environ["PATH"]
    env = {k: v for k, v in os.environ.items() if k not in (REQUIRE, "PYTEST_ADDOPTS")}
    env.update(PATH=path, **({REQUIRE: "1"} if require else {}))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "tests/test_slurm.py::test_dry_run_of_a_two_node_gpu_job"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    return result.returncode, result.stdout + result.stderr, f"sinfo: {NO_CONTROLLER}" if slurm_installed \
        else "no sinfo on PATH"


@pytest.mark.parametrize("slurm_installed", [False, True], ids=["no_slurm", "no_controller"])
def test_without_a_cluster_its_tests_are_skipped_saying_how_to_run_them(tmp_path, slurm_installed):
    """The plain test command: passes, and prints the reason once (not once per test), nothing installed."""
    returncode, out, missing = run_pytest_without_a_cluster(tmp_path, slurm_installed, require=False)
    assert returncode == 0 and "2 skipped" in out, out
    reasons = [line for line in out.splitlines() if "no local Slurm cluster answers" in line]
    assert reasons == [f"SKIPPED [2] tests/test_slurm.py: no local Slurm cluster answers ({missing}); to run these "
                       f"tests start one with `{START}` (root; installs Slurm with apt-get on Debian); {REQUIRE}=1 "
                       "makes them fail instead of skip"], out


@pytest.mark.parametrize("slurm_installed", [False, True], ids=["no_slurm", "no_controller"])
def test_without_a_cluster_its_tests_fail_where_required(tmp_path, slurm_installed):
    """CI (SSL_SCRIPTS_REQUIRE_SLURM=1): a cluster that does not answer fails the tests that need it."""
    returncode, out, missing = run_pytest_without_a_cluster(tmp_path, slurm_installed, require=True)
    assert returncode == 1 and "2 errors" in out and "skipped" not in out, out
    assert f"{REQUIRE} is set but no local Slurm cluster answers ({missing}): start one with `{START}` (root; " \
           "installs Slurm with apt-get on Debian)" in out.splitlines(), out
