"""The siamese task (ssl_scripts/tasks/siamese.py): its options, losses wiring, and evaluation."""
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from ssl_scripts import UserError
from helpers import parse
from ssl_scripts.tasks.siamese import view_pair_metrics


def test_view_pairs_tell_two_views_of_one_image_from_two_images_and_draw_the_same_views_each_time():
    AcceleratorState._reset_state(True)
    accelerator = Accelerator(cpu=True)
    images = torch.randint(0, 256, (50, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    flatten = torch.nn.Flatten()
    before = torch.random.get_rng_state()
    # Unaugmented views are the image itself: distance 0 against another image's, every time.
    assert view_pair_metrics(accelerator, flatten, images, "none", 16) == {"eval/view_pair_auc": 1.0}
    # An embedding that ignores the image cannot tell the pairs apart.
    constant = view_pair_metrics(accelerator, Constant(), images, "simclr", 16)
    assert constant == {"eval/view_pair_auc": 0.5}
    first = view_pair_metrics(accelerator, flatten, images, "simclr", 16)["eval/view_pair_auc"]
    assert 0.5 < first < 1 and view_pair_metrics(accelerator, flatten, images, "simclr", 16) == {
        "eval/view_pair_auc": first}
    assert torch.equal(torch.random.get_rng_state(), before)  # training's random stream untouched


class Constant(torch.nn.Module):
    def forward(self, x):
        return torch.ones(len(x), 4)


def test_simclr_takes_augment_pairs_all_similar_and_says_so_otherwise():
    args = parse(["--method", "simclr", "--augment", "none", "--deterministic"], "siamese")
    assert args.pairs == "augment" and args.positive_fraction == 1.0 and args.augment == "none"
    assert args.temperature == 0.5
    assert parse(["--pairs", "augment"], "siamese").positive_fraction == 0.5  # contrastive: half dissimilar
    assert parse(["--pairs", "augment"], "siamese").augment == "simclr"  # the task's default for view pairs
    assert parse([], "siamese").augment == "crop_flip" and parse([], "siamese").pairs == "label"
    for refused in (["--method", "simclr", "--pairs", "label"], ["--method", "byol", "--positive-fraction", "0.5"]):
        with pytest.raises(UserError, match="takes two views of every image"):
            parse(refused, "siamese")
    with pytest.raises(UserError, match="--temperature must be > 0"):
        parse(["--method", "simclr", "--temperature", "0"], "siamese")
    with pytest.raises(UserError, match="--loss is now --method: --loss ntxent is --method simclr"):
        parse(["--loss", "ntxent"], "siamese")


def test_label_pairs_on_unlabeled_images_are_refused_before_any_data_loads():
    with pytest.raises(UserError, match="--pairs label needs a label for every train image"):
        parse(["--dataset", "images"], "siamese")


def siamese_task(*options):
    """The Siamese task as the loop makes it, on 40 labelled images of 4 classes (no data loaded)."""
    from types import SimpleNamespace
    from ssl_scripts.tasks.siamese import Siamese
    args = parse(["--model", "simple_cnn", "--dataset", "synthetic", "--augment", "none", *options], "siamese")
    labels = torch.arange(40) % 4
    dataset = SimpleNamespace(train_labels=labels, classes=["a", "b", "c", "d"])
    return Siamese(args, dataset, SimpleNamespace(index_device=torch.device("cpu"))), labels


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_the_online_probe_learns_from_detached_features_and_never_moves_the_encoder(method):
    from ssl_scripts.models.encoders import EncoderWithHead, build_encoder
    from ssl_scripts.tasks.siamese import ViewBatch
    torch.manual_seed(0)
    task, labels = siamese_task("--method", method, "--projector-hidden", "16", "--predictor-hidden", "8",
                                "--embedding-dim", "8")
    encoder = build_encoder("simple_cnn", 32)
    model = EncoderWithHead(encoder, task.build_head(encoder))
    assert model.head.probe is not None and model.head.probe.out_features == 4
    views = torch.rand(12, 3, 32, 32)
    batch = ViewBatch(views, torch.ones(6), labels[:12])

    loss, metrics = task.step(model, batch)  # the method's loss + the probe's
    loss.backward()
    with_probe = [p.grad.clone() for p in encoder.parameters()]
    probe_moved = model.head.probe.linear.weight.grad.abs().sum().item()
    model.zero_grad(set_to_none=True)
    method_loss, _ = task.method.loss(model, model.head, views, model(views), batch.targets)
    method_loss.backward()
    assert probe_moved > 0 and model.head.probe.linear.weight.grad is None  # only the probe's own loss trains it
    assert all(torch.equal(a, p.grad) for a, p in zip(with_probe, encoder.parameters()))  # the probe adds nothing
    assert 0 <= metrics["online_linear_acc"] <= 1 and metrics["online_linear_loss"] > 0


def test_unlabelled_train_images_get_no_online_probe_said_once(capsys):
    from types import SimpleNamespace
    from ssl_scripts.tasks.siamese import Siamese
    args = parse(["--model", "simple_cnn", "--dataset", "synthetic", "--method", "simclr"], "siamese")
    unlabelled = SimpleNamespace(train_labels=torch.full((10,), -1), classes=[])
    task = Siamese(args, unlabelled, SimpleNamespace(index_device=torch.device("cpu")))
    assert task.probe_classes == 0 and capsys.readouterr().out.count("no online linear probe") == 1
    assert not siamese_task("--method", "simclr", "--no-online-probe")[0].probe_classes


def test_a_run_made_to_collapse_says_so_in_one_line_and_a_healthy_one_does_not(tmp_path, monkeypatch, capsys):
    """An attract-only loss (every embedding pulled toward every other, no negatives, no predictor or stop-gradient)
    collapses within a few steps: the collapse line once; the same run with SimCLR's negatives (and recipe): none."""
    import torch.nn.functional as F
    from ssl_scripts import loop
    from ssl_scripts.methods import METHODS
    from ssl_scripts.methods.simclr import SimCLR
    from ssl_scripts.tasks import TASKS
    from helpers import exited

    class AttractOnly(SimCLR):
        name = "attract"

        def loss(self, model, head, views, output, similar):
            z = F.normalize(output.projection, dim=1)
            return -(z @ z.T).mean(), z.chunk(2)[0]
    monkeypatch.setitem(METHODS, "attract", AttractOnly)
    said = {}
    for method, optimizer in (("attract", ["--optimizer", "sgd", "--lr", "0.5"]), ("simclr", [])):
        AcceleratorState._reset_state(True)
        out = tmp_path / method
        try:
            loop.train(TASKS["siamese"], [
                "--method", method, "--dataset", "synthetic", "--model", "simple_cnn", "--batch-size", "32",
                "--max-steps", "8", "--log-every", "2", "--report-to", "none", "--skip-eval", "--no-online-probe",
                *optimizer, "--embedding-dim", "32", "--output-dir", str(out)])
        finally:
            exited(out)
        said[method] = [line for line in capsys.readouterr().out.splitlines() if "embeddings have collapsed" in line]
    assert len(said["attract"]) == 1 and said["attract"][0].startswith("warning: step ") and not said["simclr"]
    assert "1/sqrt(32)" in said["attract"][0]


def test_a_method_recipe_gives_way_to_explicit_options_and_to_another_optimizer():
    byol = parse(["--method", "byol"], "siamese")
    assert (byol.optimizer, byol.lr, byol.weight_decay, byol.batch_size) == ("lars", 1.0, 1e-5, 256)
    assert byol.warmup_epochs == 10
    assert parse(["--method", "byol", "--lr", "0.5"], "siamese").lr == 0.5
    # its lr, weight decay and warm-up were tuned for LARS: with SGD, the model's recipe and the plain defaults
    sgd = parse(["--method", "byol", "--optimizer", "sgd"], "siamese")
    assert (sgd.lr, sgd.weight_decay, sgd.warmup_epochs, sgd.embedding_dim) == (0.1, 5e-4, 0, 256)
    with pytest.raises(UserError, match="--queue-size must be at least the global batch"):
        parse(["--method", "mocov2", "--queue-size", "128"], "siamese")


def test_the_fault_tests_hook_poisons_every_output_of_the_siamese_head(monkeypatch):
    from types import SimpleNamespace
    from ssl_scripts.models.encoders import EncoderWithHead, build_encoder
    from ssl_scripts.training.instruments import inject_faults
    monkeypatch.setenv("SSL_SCRIPTS_FAULT", "nan@1")
    task, _ = siamese_task("--method", "simclr", "--projector-hidden", "8", "--embedding-dim", "4")
    encoder = build_encoder("simple_cnn", 32)
    model = EncoderWithHead(encoder, task.build_head(encoder))
    inject_faults(model, SimpleNamespace(process_index=0), SimpleNamespace(step=0))
    output = model(torch.rand(2, 3, 32, 32))
    assert torch.isnan(output.projection).all() and torch.isnan(output.probe_logits).all()
