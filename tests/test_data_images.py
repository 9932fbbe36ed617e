"""Every dataset's form in memory (ssl_scripts/data/image_data.py): the generated set and the channel statistics."""
import torch

from ssl_scripts.data.image_data import make_synthetic


def test_synthetic_is_seeded_and_shaped():
    a, b = make_synthetic(), make_synthetic()
    assert torch.equal(a.train_images, b.train_images) and a.train_images.shape == (1024, 3, 32, 32)
    assert a.train_images.dtype == torch.uint8 and a.test_labels.shape == (256,)


def test_channel_statistics_sample_the_whole_split():
    # An image folder is sorted by class: here 15,000 black images, then 15,000 white ones.
    from ssl_scripts.data.image_data import ImageData
    images = torch.cat([torch.zeros(15000, 3, 4, 4), torch.full((15000, 3, 4, 4), 255.0)]).to(torch.uint8)
    labels = torch.cat([torch.zeros(15000), torch.ones(15000)]).long()
    mean, std = ImageData(images, labels, images[:2], labels[:2], ["black", "white"]).channel_stats()
    assert all(abs(m - 0.5) < 0.02 for m in mean) and all(abs(s - 0.5) < 0.02 for s in std)


def test_channel_stats_in_chunks_equal_the_whole_sample_at_once():
    data = make_synthetic(32, n_train=1000, n_test=10)
    mean, std = data.channel_stats()
    x = data.train_images.double() / 255
    torch.testing.assert_close(torch.tensor(mean, dtype=torch.float64), x.mean(dim=(0, 2, 3)), rtol=0, atol=1e-9)
    torch.testing.assert_close(torch.tensor(std, dtype=torch.float64), x.std(dim=(0, 2, 3)), rtol=0, atol=1e-9)
