"""A split decoded as training reads it (ssl_scripts/data/streaming.py)."""


def test_the_stream_decode_pool_is_forked_from_the_training_thread_before_the_reader_thread(image_folder, tmp_path):
    # Forking a threaded process can deadlock the child (Python 3.12 warns of it): the pool's workers are forked
    # by the thread that first reads ahead, the training thread, before the reader thread exists.
    import json
    import subprocess
    import sys
    script = f"""
import json, os, threading, torch
from ssl_scripts.data import placement, streaming
dataset = streaming.stream_imagefolder({str(image_folder)!r}, 16, cache_dir={str(tmp_path / "cache")!r})
forks = []
os.register_at_fork(before=lambda: forks.append([t.name for t in [threading.current_thread(), *threading.enumerate()]]))
images = placement.TrainImages(dataset.train_images, "stream", torch.device("cpu"))
images.read_ahead(torch.tensor([0, 1, 2]))
assert torch.equal(images[torch.tensor([0, 1, 2])], dataset.sample_images[:3])
print(json.dumps([forks, dataset.train_images.workers]))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    forks, workers = json.loads(result.stdout.splitlines()[-1])
    assert len(forks) == workers and all(threads[0] == "MainThread" for threads in forks), forks
    assert not [name for threads in forks for name in threads if name.startswith("stream-reader")], forks
