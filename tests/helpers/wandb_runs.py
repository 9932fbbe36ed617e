"""The offline W&B runs a training wrote, found and read back with wandb's own tool. (Not named wandb.py: a
module of that name here would stand in for the wandb package wherever this folder is first on sys.path.)"""
import json
import subprocess


def wandb_runs(output_dir):
    """The offline W&B run folders a training wrote under OUTPUT_DIR/wandb, oldest first."""
    return sorted((output_dir / "wandb").glob("offline-run-*"))


def wandb_read(run_dir):
    """A run read back with wandb's own tool: (summary object of `leet inspect --summary`, history items)."""
    summary = subprocess.run(["wandb", "leet", "inspect", "--summary", "--json", str(run_dir)],
                             capture_output=True, text=True, check=True)
    records = subprocess.run(["wandb", "leet", "inspect", "--json", str(run_dir)],
                             capture_output=True, text=True, check=True)
    history = [json.loads(line)["history"]["item"] for line in records.stdout.splitlines()
               if '"type":"history"' in line]
    return json.loads(summary.stdout), history
