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
