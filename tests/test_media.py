"""ssl_scripts/evaluation/media.py: the dashboard pictures show what they claim to."""
import torch

from ssl_scripts.evaluation import media


def test_confusion_matrix_shades_rows_by_share():
    true = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    predicted = torch.tensor([0, 0, 1, 1, 1, 0, 3, 2])
    picture = media.confusion_matrix(true, predicted, ["a", "b", "c", "d"])
    cell, margin = 64, 48

    def share(i, j):  # blue channel stays 255; red = 255 * (1 - share of the row)
        return 1 - picture.pixels[margin + i * cell + 2, margin + j * cell + 60][0] / 255

    expected = [[2 / 3, 1 / 3, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0.5, 0.5]]
    for i in range(4):
        for j in range(4):
            assert abs(share(i, j) - expected[i][j]) < 2 / 255


def test_pca_finds_the_directions_of_largest_variance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=g) * torch.tensor([0.1, 5.0, 1.0])
    projected = media.pca_2d(x)
    assert projected.shape == (500, 2)
    assert abs(torch.corrcoef(torch.stack([projected[:, 0], x[:, 1]]))[0, 1]) > 0.99
    assert abs(torch.corrcoef(torch.stack([projected[:, 1], x[:, 2]]))[0, 1]) > 0.99


def test_scatter_colours_points_by_class():
    points = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    picture = media.scatter(points, torch.tensor([0, 3]), "two points", size=100)
    assert tuple(picture.pixels[100 - 10, 10]) == media.PALETTE[0]  # (0, 0) is drawn bottom left
    assert tuple(picture.pixels[10, 90]) == media.PALETTE[3]  # (1, 1) top right


def test_confusion_matrix_names_its_axes_true_and_predicted():
    picture = media.confusion_matrix(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 2]),
                                     ["0°", "90°", "180°", "270°"])
    cell, margin = 64, 48
    dark = picture.pixels.astype(int).sum(-1) < 3 * 128
    # "predicted" above the column names, over the grid; "true" up the left side, across the middle of the grid,
    # where no row name is (those sit at the middle of each row)
    assert dark[:14, margin:].sum() > 20
    middle = margin + 2 * cell
    assert dark[middle - 8:middle + 8, :16].sum() > 10
    rows = dark[:, :16].sum(1).nonzero()[0]
    assert rows.max() - rows.min() > 20  # a word written upwards: taller than one line
