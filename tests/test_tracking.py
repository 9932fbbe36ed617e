"""Tracking (ssl_scripts/outputs/tracking.py, through the Run) under real launches: values reduced over ranks, one W&B
run per training across resumes, TensorBoard as the alternative. Runs are read back with the trackers' own tools."""
import json

import pytest

from helpers import REPO, SMALL, TRACKED, accelerate_launch, run_script, toy_train, wandb_read, wandb_runs


@pytest.mark.e2e
def test_logged_train_loss_is_the_mean_over_both_ranks(tmp_path):
    out = tmp_path / "probe"
    result = run_script(["accelerate", "launch", "--config_file", f"{REPO}/accelerate_configs/cpu.yaml",
                         "--num_processes", "2", f"{REPO}/tests/helpers/probes/rank_metrics_probe.py",
                         "--dataset", "synthetic",
                         "--batch-size", "8", "--max-steps", "6", "--log-every", "3", "--output-dir", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    fed = [json.loads((out / f"fed_rank{rank}.json").read_text()) for rank in (0, 1)]
    (run,) = wandb_runs(out)
    _, history = wandb_read(run)
    logged = {item["_step"]: item["train/loss"] for item in history if "train/loss" in item}
    assert sorted(logged) == [3, 6]
    for step, value in logged.items():
        per_rank = [[x["loss"] for x in rank if step - 3 < x["step"] <= step] for rank in fed]
        assert len(per_rank[0]) == len(per_rank[1]) == 3
        mean_over_ranks = sum(per_rank[0] + per_rank[1]) / 6
        assert abs(value - mean_over_ranks) < 1e-6
        assert abs(value - sum(per_rank[0]) / 3) > 1  # rank 0's own value would be far off


@pytest.mark.e2e
def test_a_resumed_training_logs_to_the_same_wandb_run(tmp_path):
    out = tmp_path / "run"
    first = accelerate_launch("train_rotation.py", *TRACKED, "--max-steps", "3", "--output-dir", out)
    assert first.returncode == 0, first.stderr[-3000:]
    run_id = (out / "wandb_run_id").read_text().strip()
    # The same output dir with a longer budget resumes from the step-3 checkpoint (as a requeued job would).
    second = accelerate_launch("train_rotation.py", *TRACKED, "--max-steps", "6", "--log-every", "1",
                               "--output-dir", out)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout and f"wandb sync {out}/wandb/offline-run-*-{run_id}" in second.stdout
    runs = wandb_runs(out)
    assert len(runs) == 2 and all(r.name.endswith(f"-{run_id}") for r in runs)  # offline: one folder per start
    summary, history = wandb_read(runs[1])
    assert summary["run_id"] == run_id
    assert [item["_step"] for item in history if "train/loss" in item] == [4, 5, 6]  # continues, no repeats


@pytest.mark.e2e
def test_tensorboard_gets_scalars_images_and_histograms(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    result = accelerate_launch("train_siamese.py", *SMALL[:-1], "tensorboard", "--max-steps", "4",
                               "--log-every", "2", "--output-dir", out)
    assert result.returncode == 0, result.stderr[-3000:]
    events = EventAccumulator(str(out / "siamese"), size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4]
    assert abs(events.Scalars("eval/pair_auc")[-1].value - json.loads((out / "results.json").read_text())[
        "eval/pair_auc"]) < 1e-6  # stored as float32
    assert events.Tags()["images"] == ["eval/embedding_pca"]
    assert set(events.Tags()["histograms"]) == {"eval/distance_similar", "eval/distance_dissimilar"}


def test_metrics_are_logged_and_cut_back_on_resume(tmp_path):
    toy_train(tmp_path, stop_after=5)  # logs at 2, 4; checkpoint at 3
    toy_train(tmp_path)
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [line["step"] for line in lines if "train/loss" in line] == [2, 4, 6, 8, 10, 12, 14, 16]
    epoch_ends = [line for line in lines if "train/epoch_time_s" in line]
    assert [line["step"] for line in epoch_ends] == [8, 16] and all(e["train/epoch_time_s"] > 0 for e in epoch_ends)


def test_metrics_lines_a_full_disk_holds_back_are_written_in_order_once_there_is_room(small_disk, capsys):
    from types import SimpleNamespace
    from ssl_scripts.outputs.tracking import Tracker
    args = SimpleNamespace(output_dir=str(small_disk.path))
    accelerator = SimpleNamespace(is_main_process=True, log=lambda values, step: None)
    tracker = Tracker(args, accelerator, "test")
    tracker.log({"train/loss": 1.0}, step=1)
    small_disk.fill()
    tracker.log({"train/loss": 0.9, "pad": "x" * 10_000}, step=2)
    tracker.log({"train/loss": 0.8}, step=3)
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "metrics.jsonl': no space left on device" in warnings[0], warnings
    assert [json.loads(line)["step"] for line in open(tracker.metrics_path)] == [1]

    small_disk.free()
    tracker.log({"train/loss": 0.7}, step=4)
    assert [json.loads(line)["step"] for line in open(tracker.metrics_path)] == [1, 2, 3, 4]
    assert "the 2 line(s) held back are written" in capsys.readouterr().out


class _OfflineWandb:
    """Accelerate and wandb as the Tracker sees them: wandb.init's mode is its mode argument, else WANDB_MODE."""

    def __init__(self, tmp_path):
        self.is_main_process, self.log_with, self.num_processes, self.mixed_precision = True, ["wandb"], 1, "no"
        self.tmp_path = tmp_path

    def init_trackers(self, project, config=None, init_kwargs=None):
        import os
        from types import SimpleNamespace
        kwargs = (init_kwargs or {}).get("wandb", {})
        mode = kwargs.get("mode") or os.environ.get("WANDB_MODE") or "online"
        self.run = SimpleNamespace(settings=SimpleNamespace(mode=mode), id=kwargs["id"],
                                   dir=str(self.tmp_path / "wandb" / f"offline-run-1-{kwargs['id']}" / "files"))

    def get_tracker(self, name, unwrap=False):
        return self.run


@pytest.mark.parametrize("user_mode, says", [("offline", "W&B is offline (WANDB_MODE=offline)"),
                                             ("", "W&B is offline (no credentials found)")],
                         ids=["set_by_the_user", "no_credentials"])
def test_wandb_offline_says_why(tmp_path, monkeypatch, capsys, user_mode, says):
    from types import SimpleNamespace
    from ssl_scripts.outputs.tracking import Tracker, tracker_name
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_API_KEY", "")
    monkeypatch.setenv("WANDB_MODE", user_mode)
    args = SimpleNamespace(report_to="wandb", output_dir=str(tmp_path), wandb_project=None, run_name=None,
                           wandb_entity=None, wandb_tags=None)
    assert tracker_name(args) == "wandb"
    accelerator = _OfflineWandb(tmp_path)
    Tracker(args, accelerator, "rotation").start(0, True, {})
    out = capsys.readouterr().out
    assert accelerator.run.settings.mode == "offline" and says in out and "wandb sync" in out, out
    assert ("no credentials" in out) == (user_mode == "")


def test_tensorboard_writes_its_hparams_into_the_run_not_a_timestamped_one(tmp_path):
    from types import SimpleNamespace
    from accelerate import Accelerator
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator  # reads hparams
    from ssl_scripts.outputs.tracking import Tracker
    args = SimpleNamespace(report_to="tensorboard", output_dir=str(tmp_path), lr=0.1, model="simple_cnn")
    accelerator = Accelerator(cpu=True, log_with="tensorboard", project_dir=str(tmp_path))
    tracker = Tracker(args, accelerator, "rotation")
    tracker.start(0, True, {"git_commit": "abc"})
    tracker.log({"train/loss": 1.0}, step=1)
    tracker.summarize({})
    run = tmp_path / "rotation"
    assert [p.name for p in run.iterdir() if p.is_dir()] == []  # TensorBoard shows one run: this one
    events = EventAccumulator(str(run))
    events.Reload()
    hparams = events.PluginTagToContent("hparams")
    assert b"git_commit" in hparams["_hparams_/experiment"] and "train/loss" in events.Tags()["tensors"]
