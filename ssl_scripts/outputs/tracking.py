"""What a run reports as it goes: the tracker (W&B or TensorBoard, through Accelerate), one W&B run per training
across resumes and requeues, OUTPUT_DIR/metrics.jsonl, and the dashboard media (ssl_scripts.evaluation.media) routed to each
tracker. Trackers live on the main process; the others' calls return at once."""
import importlib.util
import json
import os
import sys
import uuid

from ssl_scripts.evaluation import media
from ssl_scripts.runtime import files


def tracker_name(args):
    """What Accelerator(log_with=...) gets: "wandb", "tensorboard" or None. Without W&B credentials the run is
    offline (synced later), so nodes without internet still get one (Tracker._init_tracker)."""
    tracker = args.report_to if args.report_to != "none" else None
    if tracker == "wandb" and importlib.util.find_spec("wandb") is None:
        print("warning: wandb is not installed (pip install wandb), so this run is not tracked; "
              "pass --report-to none to silence this", file=sys.stderr)
        tracker = None
    return tracker


def add_options(group) -> None:
    """Where the metrics go (--report-to) and the W&B run's names: in the run group (training/options.py)."""
    group.add_argument("--report-to", choices=("wandb", "tensorboard", "none"), default="wandb",
                       help="the tracker the metrics go to (none: no tracker)")
    group.add_argument("--wandb-project", default=None, help="default: $WANDB_PROJECT, else the task's name")
    group.add_argument("--wandb-entity", default=None, help="W&B team or user (default: $WANDB_ENTITY, else yours)")
    group.add_argument("--run-name", default=None,
                       help="display name of the run (default: $WANDB_NAME, else the output dir's name)")
    group.add_argument("--wandb-tags", default=None, help="comma-separated tags (default: $WANDB_TAGS)")


def _wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = os.path.join(os.path.expanduser("~"), ".netrc")
    return os.path.exists(netrc) and "api.wandb.ai" in open(netrc).read()


def scalars(values: dict) -> dict:
    """values without the dashboard media: what metrics.jsonl, results.json and checkpoints hold."""
    return {k: v for k, v in values.items() if not isinstance(v, (media.Picture, media.Histogram))}


class Tracker:
    def __init__(self, args, accelerator, project: str):
        self.args, self.accelerator, self.project = args, accelerator, project
        self.metrics_path = os.path.join(args.output_dir, "metrics.jsonl")
        self._unwritten = []  # metrics.jsonl lines a full disk held back, written with the next ones

    def start(self, step: int, fresh: bool, environment: dict) -> None:
        """metrics.jsonl cut back to `step` (what comes after it will be logged again), then the tracker."""
        if not self.accelerator.is_main_process:
            return
        self._cut_metrics(step, fresh)
        if self.accelerator.log_with:
            self._init_tracker(environment)

    def _cut_metrics(self, step: int, fresh: bool) -> None:
        if not os.path.exists(self.metrics_path):
            return
        with open(self.metrics_path) as f:
            kept = [] if fresh else [line for line in f if line.strip() and json.loads(line)["step"] <= step]
        files.write_text(self.metrics_path, "".join(kept))  # whole: a full disk leaves the file as it was

    def log(self, values: dict, step: int) -> None:
        """Scalars to the tracker and metrics.jsonl, media to the tracker. Values must already be global."""
        if not self.accelerator.is_main_process:
            return
        numbers = scalars(values)
        self._append_metrics(json.dumps({"step": step, **numbers}) + "\n")
        self.accelerator.log(numbers, step=step)
        pictures = {k: v for k, v in values.items() if k not in numbers}
        for tracker in self.accelerator.trackers if pictures else ():
            if tracker.name == "wandb":
                import wandb
                tracker.log({k: wandb.Image(v.pixels, caption=v.caption) if isinstance(v, media.Picture)
                             else wandb.Histogram(v.values) for k, v in pictures.items()}, step=step)
            elif tracker.name == "tensorboard":
                for k, v in pictures.items():
                    if isinstance(v, media.Picture):
                        tracker.writer.add_image(k, v.pixels, step, dataformats="HWC")
                    else:
                        tracker.writer.add_histogram(k, v.values, step)

    def _append_metrics(self, line: str) -> None:
        """A line appended to metrics.jsonl, whole. On a full disk the training goes on (its checkpoints are what
        stop it): lines are held back and written, in order, once there is room."""
        warned = bool(self._unwritten)
        self._unwritten.append(line)
        try:
            files.append_whole(self.metrics_path, "".join(self._unwritten))
        except files.WriteFailed as e:
            if not warned:
                print(f"warning: {e.problem}; its lines are held back until there is room (training goes on)",
                      flush=True)
            return
        if warned:
            print(f"{self.metrics_path!r}: the {len(self._unwritten) - 1} line(s) held back are written", flush=True)
        self._unwritten = []

    def summarize(self, results: dict) -> None:
        """The run's final figures as the W&B run's summary; then the trackers end."""
        if self.accelerator.is_main_process and "wandb" in [t.name for t in self.accelerator.trackers]:
            self.accelerator.get_tracker("wandb", unwrap=True).summary.update(results)
        self.accelerator.end_training()

    def _init_tracker(self, environment: dict) -> None:
        args, accelerator = self.args, self.accelerator
        config = {k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v) for k, v in vars(args).items()}
        config.update(world_size=accelerator.num_processes, mixed_precision=str(accelerator.mixed_precision),
                      **environment)
        init_kwargs, project = {}, self.project
        if args.report_to == "wandb":
            # Options win over WANDB_* variables; wandb itself reads WANDB_ENTITY, WANDB_TAGS, WANDB_MODE, ...
            project = args.wandb_project or os.environ.get("WANDB_PROJECT") or project
            init_kwargs["wandb"] = {
                "id": self._wandb_run_id(), "resume": "allow", "dir": os.environ.get("WANDB_DIR") or args.output_dir,
                "name": args.run_name or os.environ.get("WANDB_NAME") or os.path.basename(
                    os.path.abspath(args.output_dir)),
                "entity": args.wandb_entity, "tags": args.wandb_tags.split(",") if args.wandb_tags else None}
            # The mode the user set (WANDB_MODE) wins; else offline without credentials, said as the reason.
            why_offline = f"WANDB_MODE={os.environ.get('WANDB_MODE')}"
            if not os.environ.get("WANDB_MODE") and not _wandb_credentials():
                os.environ.pop("WANDB_MODE", None)  # set but empty means unset; wandb refuses ""
                init_kwargs["wandb"]["mode"], why_offline = "offline", "no credentials found"
        # TensorBoard: the hparams go into the run's own folder below, not a timestamped run beside it (Accelerate's
        # store_init_configuration); config.json in OUTPUT_DIR keeps them too.
        tensorboard = args.report_to == "tensorboard"
        accelerator.init_trackers(project, config=None if tensorboard else config, init_kwargs=init_kwargs)
        if tensorboard:
            writer = accelerator.get_tracker("tensorboard", unwrap=True)
            writer.add_hparams(config, metric_dict={}, run_name=".")  # "." : the writer's own log dir
            writer.flush()
        if args.report_to == "wandb":
            run = accelerator.get_tracker("wandb", unwrap=True)
            if run.settings.mode == "offline":
                # Each (re)start writes its own offline folder; synced together they become one run again.
                parts = os.path.join(os.path.dirname(os.path.dirname(run.dir)), f"offline-run-*-{run.id}")
                print(f"W&B is offline ({why_offline}): the run is in {os.path.dirname(run.dir)}; "
                      f"upload it (all its resumed parts as one run) with: wandb sync {parts}", flush=True)

    def _wandb_run_id(self) -> str:
        """One training is one W&B run: the id is kept in OUTPUT_DIR and reused on resume and requeue. Main process
        only (trackers live there), so no other process depends on what its node sees of the file."""
        path = os.path.join(self.args.output_dir, "wandb_run_id")
        if not os.path.exists(path):  # W&B's own id format: 8 lowercase alphanumerics
            files.write_text(path, os.environ.get("WANDB_RUN_ID") or uuid.uuid4().hex[:8])
        with open(path) as f:
            return f.read().strip()
