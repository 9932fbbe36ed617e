"""Each embedding's nearest neighbours by cosine similarity, and a picture of a few images beside theirs: how users
look at what an encoder learned on images without labels."""
import torch
import torch.nn.functional as F

# Similarities held at once: the queries of one block times every image (256 MB of float32).
BLOCK_VALUES = 2 ** 26


def nearest_neighbours(embeddings: torch.Tensor, k: int, block_values: int = BLOCK_VALUES):
    """(indices, similarities), each (N, k): every row's k most cosine-similar other rows, most similar first
    (itself excluded), computed a block of queries at a time on the embeddings' device."""
    x = F.normalize(embeddings.float(), dim=1)
    n = len(x)
    k = min(k, n - 1)
    rows = max(1, block_values // n)
    indices, similarities = [], []
    for start in range(0, n, rows):
        block = x[start:start + rows] @ x.T
        own = torch.arange(len(block), device=x.device)
        block[own, own + start] = -float("inf")  # not its own neighbour
        values, found = block.topk(k, dim=1)
        indices.append(found.cpu())
        similarities.append(values.cpu())
    return torch.cat(indices), torch.cat(similarities)


def neighbour_grid(queries: torch.Tensor, neighbours: torch.Tensor, border: int = 3) -> torch.Tensor:
    """One row per query: the query framed in red, then its neighbours; uint8 (Q, 3, S, S) and (Q, K, 3, S, S) ->
    a (3, H, W) float picture in [0, 1] (white gaps between images)."""
    from torchvision.utils import make_grid
    framed = queries.float().div(255)
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    for image in framed:
        image[:, :border], image[:, -border:] = red, red
        image[:, :, :border], image[:, :, -border:] = red, red
    rows = torch.cat([framed[:, None], neighbours.float().div(255)], dim=1)
    return make_grid(rows.flatten(0, 1), nrow=rows.shape[1], padding=4, pad_value=1.0)
