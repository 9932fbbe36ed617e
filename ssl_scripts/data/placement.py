"""Where the train split lives while training (--data-placement): on the training device, indexed there (airbench's
way, the fastest); in host memory, each batch gathered there and copied to the device while the device is still
busy with the previous step; or nowhere (stream, image folders): each batch decoded from its files. Chosen from
the split's decoded size against free memory, before anything large is allocated. An image folder's split is
memory-mapped from its cache file: one copy per node, however many processes.
"""
import collections
import os

import torch

from ssl_scripts import UserError
from ssl_scripts.runtime import files

PLACEMENTS = ("auto", "device", "host", "stream")
# Of a GPU's free memory, what the train split may take: the rest is for the model, its optimizer and activations.
DEVICE_SHARE = 0.7
# Of the host's available memory, what the decoded dataset may take (the page cache of its mapped file included).
HOST_SHARE = 0.8
# stream: batches decoding ahead at most (the loader draws one ahead; a run's end leaves one never trained on).
MAX_READ_AHEAD = 4


def _size(n: int) -> str:
    return files.size(n, exact=False)


def add_options(group) -> None:
    """--data-placement, in the data group (ssl_scripts/data/options.py)."""
    group.add_argument("--data-placement", choices=PLACEMENTS, default="auto",
                       help="device: the train split on each GPU (fastest); host: in host memory, one copy per "
                            "node, batches copied to the GPU as they are needed; stream (image folders): each "
                            "batch decoded from its files, for folders beyond host memory; auto: device if it fits "
                            f"in {DEVICE_SHARE:.0%}% of a GPU's free memory, else host, else stream (said at the start)")


def host_available_bytes() -> int:
    """What the kernel estimates can be allocated without swapping (MemAvailable: free + reclaimable cache)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def device_free_bytes(device: torch.device) -> int:
    return torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else host_available_bytes()


def processes_per_device(device: torch.device) -> int:
    """How many of this node's processes train on `device` (Accelerate puts local process i on GPU i % GPUs), each
    holding its own copy of a split placed there. 1 on a CPU, where the device placement is the host's tensor."""
    if device.type != "cuda":
        return 1
    processes, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", "1")), max(1, torch.cuda.device_count())
    index = device.index or 0
    return len(range(index, processes, gpus))


def evaluation_bytes(args, images: int, processes_per_device: int = 1) -> int:
    """GPU memory an evaluation's frozen features take at their peak on the main process's GPU: the features of
    every image (train and test, float32) gathered on every process there (its own part and the gathered whole: 2
    copies each) and, on the main process, normalized for k-NN and standardized for the linear probe (2 more).
    0 with --skip-eval."""
    if getattr(args, "skip_eval", False):
        return 0
    from ssl_scripts.models.encoders import build_encoder
    with torch.random.fork_rng(devices=[]):  # a throwaway network: the main process's random stream untouched
        feature_dim = build_encoder(args.model, args.image_size).feature_dim
    return images * feature_dim * 4 * (2 * processes_per_device + 2)


def choose(requested: str, train_bytes: int, host_bytes: int, device: torch.device, device_free: int,
           host_free: int, streamable: bool = False, processes_per_device: int = 1, eval_bytes: int = 0):
    """(placement, why) for a train split of train_bytes and a dataset taking host_bytes of host memory on this
    node; UserError, naming what is needed and free, when the requested placement (or, for auto, any) cannot
    hold it. streamable: image files that `stream` can decode as they are needed. On a CPU the device is the host:
    device and host hold the data in the same memory. On a GPU, the device placement holds one copy of the split
    per process sharing the GPU, next to evaluation's features (eval_bytes) wherever the split is."""
    if requested == "stream":
        if not streamable:
            raise UserError("--data-placement stream decodes image files as they are needed: it takes --dataset "
                            "imagefolder (generated and downloaded sets are held in memory)")
        return "stream", "each batch decoded from its files as it is needed; nothing decoded is kept"
    on_host = host_bytes <= HOST_SHARE * host_free
    on_gpu = train_bytes * processes_per_device + eval_bytes
    on_device = on_host if device.type != "cuda" else on_gpu <= DEVICE_SHARE * device_free
    host_says = f"the dataset takes {_size(host_bytes)} of host memory per node, {_size(host_free)} available"
    shared = f" x {processes_per_device} processes sharing it" if processes_per_device > 1 else ""
    features = f" + {_size(eval_bytes)} for evaluation's features" if eval_bytes else ""
    device_says = (host_says if device.type != "cuda" else
                   f"the train split takes {_size(train_bytes)} on each GPU{shared}{features}, {_size(device_free)} "
                   f"free on {device}")
    larger = "use --data-placement stream" if streamable else "lower --image-size or use fewer images"
    if requested == "device" and not on_device:
        share = f"at most {(DEVICE_SHARE if device.type == 'cuda' else HOST_SHARE):.0%} of it is used"
        raise UserError(f"--data-placement device: {device_says} ({share}): "
                        f"{'use --data-placement host' if on_host and device.type == 'cuda' else larger}")
    if requested == "host" and not on_host:
        raise UserError(f"--data-placement host: {host_says} (at most {HOST_SHARE:.0%} of it is used): {larger}")
    if requested != "auto":
        return requested, device_says if requested == "device" else host_says
    if on_device:
        return "device", device_says
    if on_host:
        return "host", f"{device_says}, too little; {host_says}"
    if streamable:
        return "stream", f"{device_says}, too little; {host_says}, too little: each batch decoded as it is needed"
    says = host_says if device.type != "cuda" else f"{device_says}; {host_says}"
    raise UserError(f"the data fits in no placement: {says}: lower --image-size or use fewer images (or an image "
                    f"folder, which --data-placement stream reads as it goes)")


class TrainImages:
    """The train split where it was placed; images[indices] is a batch of uint8 images on the training device.

    device: indexed on the device. host: gathered on the host into pinned memory and copied without making the host
    wait (PyTorch's pinned-memory cache keeps a buffer until its copy is done). stream: decoded from the files,
    ahead of training: read_ahead(indices), the index loader's hook, starts decoding each batch as the loader draws
    it (Accelerate's loader draws one batch ahead of the one training uses), so a batch is decoded while the
    previous step runs: in one decode, every image the task reads for it (images_to_read: siamese partners too).
    index_device: where the index batches must be (the loader's device placement) for the gather to need no copy
    back to the host."""

    def __init__(self, images: torch.Tensor, placement: str, device: torch.device):
        self.placement, self.device = placement, device
        self.on_device = placement == "device"
        # On a CPU the device is the host (Accelerate names it cpu:0 with several processes, which .to() would
        # copy into: one private copy of the split per process instead of the shared mapped cache).
        self.images = images.to(device) if self.on_device and device.type != "cpu" else images
        self.index_device = device if self.on_device else torch.device("cpu")
        # stream: (Future of a decode, [(indices, its rows of the decode)] not read yet), in the order drawn
        self._ahead = collections.deque()
        # What make_batch reads for a drawn batch (the loop sets the task's Task.images_to_read), and the epoch the
        # loader draws batches of (set_epoch, with the loader's).
        self.images_to_read = lambda indices, epoch: [indices]
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    @property
    def problem(self):
        """stream: the first unreadable file met, as one line (the run stops on it where all processes agree)."""
        return self.images.problem if self.placement == "stream" else None

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose batches the loader draws from now on (images_to_read may depend on it)."""
        self.epoch = epoch

    def read_ahead(self, indices: torch.Tensor) -> torch.Tensor:
        if self.placement == "stream":
            decoded, parts = [], []
            for part in self.images_to_read(indices, self.epoch):
                part = part.cpu()
                # An index batch read twice (ntxent's partners are the anchors) is decoded once.
                same = next((rows for earlier, rows in parts if torch.equal(earlier, part)), None)
                if same is None:
                    start = sum(map(len, decoded))
                    same = slice(start, start + len(part))
                    decoded.append(part)
                parts.append((part, same))
            self._ahead.append((self.images.submit(torch.cat(decoded).tolist(), self.device.type == "cuda"), parts))
            while len(self._ahead) > MAX_READ_AHEAD:  # drawn but never trained on (the end of a run)
                self._ahead.popleft()
        return indices

    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor:
        if self.on_device:
            return self.images[indices]
        if self.placement == "stream":
            batch = self._read(indices)
        else:
            batch = torch.empty((len(indices), *self.images.shape[1:]), dtype=torch.uint8,
                                pin_memory=self.device.type == "cuda")
            torch.index_select(self.images, 0, indices, out=batch)
        return batch.to(self.device, non_blocking=True)

    def _read(self, indices: torch.Tensor) -> torch.Tensor:
        """The images read ahead for these indices (waiting for their decode if it is not done yet; batches drawn
        before theirs were never trained on and go), or decoded now (indices no drawn batch's images_to_read gave)."""
        indices = indices.cpu()
        for position, (batch, parts) in enumerate(self._ahead):
            for k, (drawn, rows) in enumerate(parts):
                if torch.equal(drawn, indices):
                    for _ in range(position):
                        self._ahead.popleft()
                    del parts[k]
                    if not parts:  # every part of its decode read
                        self._ahead.popleft()
                    return batch.result()[rows]
        return self.images.submit(indices.tolist(), self.device.type == "cuda").result()
