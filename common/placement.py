"""Where the train split lives while training (--data-placement): on the training device, indexed there (airbench's
way, the fastest); in host memory, each batch gathered there and copied to the device while the device is still
busy with the previous step; or nowhere (stream, image folders): each batch decoded from its files. Chosen from
the split's decoded size against free memory, before anything large is allocated. An image folder's split is
memory-mapped from its cache file: one copy per node, however many processes.
"""
import os

import torch

from common import UserError, files

PLACEMENTS = ("auto", "device", "host", "stream")
# Of a GPU's free memory, what the train split may take: the rest is for the model, its optimizer and activations.
DEVICE_SHARE = 0.7
# Of the host's available memory, what the decoded dataset may take (the page cache of its mapped file included).
HOST_SHARE = 0.8


def _size(n: int) -> str:
    return files.size(n, exact=False)


def add_placement_argument(group) -> None:
    group.add_argument("--data-placement", choices=PLACEMENTS, default="auto",
                       help="device: the train split on each GPU (fastest); host: in host memory, one copy per "
                            "node, batches copied to the GPU as they are needed; stream (image folders): each "
                            "batch decoded from its files, for folders beyond host memory; auto: device if it fits "
                            f"in {DEVICE_SHARE:.0%} of a GPU's free memory, else host, else stream (said at the start)")


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


def choose(requested: str, train_bytes: int, host_bytes: int, device: torch.device, device_free: int,
           host_free: int, streamable: bool = False):
    """(placement, why) for a train split of train_bytes and a dataset taking host_bytes of host memory on this
    node; UserError, naming what is needed and free, when the requested placement (or, for auto, any) cannot
    hold it. streamable: image files that `stream` can decode as they are needed. On a CPU the device is the host:
    device and host hold the data in the same memory."""
    if requested == "stream":
        if not streamable:
            raise UserError("--data-placement stream decodes image files as they are needed: it takes --dataset "
                            "imagefolder (generated and downloaded sets are held in memory)")
        return "stream", "each batch decoded from its files as it is needed; nothing decoded is kept"
    on_host = host_bytes <= HOST_SHARE * host_free
    on_device = on_host if device.type != "cuda" else train_bytes <= DEVICE_SHARE * device_free
    host_says = f"the dataset takes {_size(host_bytes)} of host memory per node, {_size(host_free)} available"
    device_says = (host_says if device.type != "cuda" else
                   f"the train split takes {_size(train_bytes)} on each GPU, {_size(device_free)} free on {device}")
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
    wait (PyTorch's pinned-memory cache keeps a buffer until its copy is done). index_device: where the index
    batches must be (the loader's device placement) for the gather to need no copy back to the host."""

    def __init__(self, images: torch.Tensor, placement: str, device: torch.device):
        self.placement, self.device = placement, device
        self.on_device = placement == "device"
        # On a CPU the device is the host (Accelerate names it cpu:0 with several processes, which .to() would
        # copy into: one private copy of the split per process instead of the shared mapped cache).
        self.images = images.to(device) if self.on_device and device.type != "cpu" else images
        self.index_device = device if self.on_device else torch.device("cpu")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor:
        if self.on_device:
            return self.images[indices]
        batch = torch.empty((len(indices), *self.images.shape[1:]), dtype=torch.uint8,
                            pin_memory=self.device.type == "cuda")
        if self.placement == "host":
            torch.index_select(self.images, 0, indices, out=batch)
        else:  # stream: common.data.StreamedImages
            self.images.decode_into(indices.tolist(), batch)
        return batch.to(self.device, non_blocking=True)
