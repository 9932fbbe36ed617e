"""Embeddings of a folder of images, or of a list of image files, with a trained encoder.

    accelerate launch embed.py --encoder runs/x/final --data-dir PHOTOS --neighbours 5   (or: ssl-embed ...)

The files are found as --dataset images finds them (any depth, hidden ones skipped, sorted by path; or a text file
listing them) and decoded as training decodes them. Processes share the work a chunk of files at a time, each file
decoded once, and each finished chunk is kept in OUTPUT_DIR/parts/, so a stopped run started again goes on where it
was. Unreadable files are skipped and counted. Written to OUTPUT_DIR (default: embeddings/ beside final/):
embeddings.npy (float32, one row per image) and files.txt (its image's path on the same line), skipped.txt (the
unreadable files and why), and with --neighbours K each image's K nearest others by cosine similarity:
neighbours.npy (row numbers), neighbour_similarities.npy, neighbours.tsv (paths) and neighbours.png (a picture of
--neighbour-queries images, framed in red, beside their neighbours).
"""
import hashlib
import json
import math
import os
import time

import numpy as np
import torch

from ssl_scripts import UserError, config
from ssl_scripts.data.decode import decode_or_problem, decode_workers, fork_pool
from ssl_scripts.data.folders import list_images
from ssl_scripts.evaluation import neighbours
from ssl_scripts.models import encoders
from ssl_scripts.models.image_input import DECODER, decode_image
from ssl_scripts.runtime import cli, distributed, files


def parse_args(argv=None) -> config.Options:
    parser = config.OptionParser(__doc__.strip().splitlines()[0])
    parser.add_argument("--encoder", required=True, help="an exported encoder: the final/ folder of a training run")
    parser.add_argument("--data-dir", required=True,
                        help="a folder of images (any layout, any depth) or a text file listing image paths")
    parser.add_argument("--output-dir", default=None, help="default: embeddings/ beside the encoder's final/ folder")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    parser.add_argument("--chunk-size", type=int, default=4096,
                        help="files per chunk: the unit processes share, and what a restarted run keeps")
    parser.add_argument("--neighbours", type=int, default=0, metavar="K",
                        help="also write each image's K nearest other images (cosine similarity)")
    parser.add_argument("--neighbour-queries", type=int, default=8,
                        help="images shown with their neighbours in neighbours.png (a seeded random choice)")
    parser.add_argument("--seed", type=int, default=0, help="of the images shown in neighbours.png")
    distributed.add_options(parser)
    args = config.decide_defaults(parser.parse_args(argv), output_default)
    config.require([
        (args.batch_size > 0, f"--batch-size must be >= 1 (got {args.batch_size})"),
        (args.chunk_size > 0, f"--chunk-size must be >= 1 (got {args.chunk_size})"),
        (args.neighbours >= 0, f"--neighbours must be >= 0 (got {args.neighbours})"),
        (args.neighbour_queries >= 1, f"--neighbour-queries must be >= 1 (got {args.neighbour_queries})"),
        *distributed.option_checks(args),
    ])
    return args


def output_default(args) -> dict:
    if args.output_dir:
        return {}
    return {"output_dir": os.path.join(os.path.dirname(os.path.abspath(args.encoder)), "embeddings")}


def work_id(encoder_dir: str, paths: list, chunk_size: int, precision: str) -> str:
    """Names what a chunk's part was made from (the encoder's files, the image list and their sizes and times, the
    decoder, the chunking, the precision), so a part another run of other inputs left is never reused."""
    def stat(path):
        try:
            st = os.stat(path)
        except OSError:  # a listed file that is missing: unreadable, and skipped
            return path, -1, -1
        return path, st.st_size, st.st_mtime_ns
    key = repr((os.path.abspath(encoder_dir), stat(os.path.join(encoder_dir, "encoder.safetensors")),
                [stat(p) for p in paths], DECODER, chunk_size, precision))
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def embed_chunk(encoder, accelerator, pool, paths: list, batch_size: int) -> dict:
    """A chunk's embeddings: its files decoded by the pool (unreadable ones kept aside with their problem), then
    encoded batch by batch."""
    decoded = pool.map(decode_or_problem, [(p, encoder.image_size) for p in paths], chunksize=16)
    kept, images, problems = [], [], []
    for i, (path, image) in enumerate(zip(paths, decoded)):
        if not listable(path):
            problems.append(f"{path!r}\ta line break, tab or non-UTF-8 byte in its name, which files.txt cannot "
                            f"hold: rename it")
        elif isinstance(image, np.ndarray):
            kept.append(i)
            images.append(torch.from_numpy(image).permute(2, 0, 1))
        else:
            problems.append(f"{path}\t{image}")
    rows = [np.zeros((0, encoder.feature_dim), np.float32)]
    with torch.inference_mode(), accelerator.autocast():
        for start in range(0, len(images), batch_size):
            batch = torch.stack(images[start:start + batch_size]).to(accelerator.device)
            rows.append(encoder(batch.float().div_(255)).float().cpu().numpy())
    return {"rows": np.concatenate(rows), "kept": np.array(kept, np.int64), "problems": np.array(problems, str)}


# What embed.py writes into OUTPUT_DIR, beside parts/.
OUTPUTS = ["embeddings.npy", "files.txt", "skipped.txt", "neighbours.npy", "neighbour_similarities.npy",
           "neighbours.tsv", "neighbours.png", "embed.json"]
PICTURE_NEIGHBOURS = 8  # neighbours shown beside each query in neighbours.png, whatever --neighbours


def listable(path: str) -> bool:
    """Whether files.txt (a path a line, UTF-8) and the tab-separated files can hold this path."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # a name of bytes that are not UTF-8 (os.walk's surrogates)
        return False
    return not {"\n", "\r", "\t"} & set(path)


def part_path(parts: str, chunk: int) -> str:
    return os.path.join(parts, f"chunk-{chunk:06d}.npz")


def read_part(path: str):
    """A finished chunk's part, or None where there is none (or a damaged one: made again)."""
    try:
        with np.load(path) as part:
            read = {name: part[name] for name in ("rows", "kept", "problems")}
    except Exception:  # missing, empty or cut short (zipfile.BadZipFile, EOFError, ...)
        return None
    return read if len(read["rows"]) == len(read["kept"]) else None


def write_part(path: str, part: dict) -> None:
    def write(temporary):
        with open(temporary, "wb") as f:
            np.savez(f, **part)
    try:
        files.write_atomically(path, write, part["rows"].nbytes)
    except files.WriteFailed as e:
        raise UserError(e.problem + ": free space, or pass another --output-dir (finished chunks are kept)") from e


def join_parts(path: str, parts: str, chunks: int, rows: int, dim: int) -> np.ndarray:
    """The parts' rows written into one .npy a part at a time (never all of them in memory), replacing `path` once
    complete; returned memory-mapped (files.WriteFailed if it cannot be written)."""
    def write(temporary):  # written in order, not mapped: a full disk is an OSError then, not a SIGBUS
        with open(temporary, "wb") as f:
            np.lib.format.write_array_header_2_0(f, {"descr": np.dtype("<f4").str, "fortran_order": False,
                                                     "shape": (rows, dim)})
            for chunk in range(chunks):
                f.write(np.ascontiguousarray(read_part(part_path(parts, chunk))["rows"], dtype="<f4").tobytes())
    files.write_atomically(path, write, rows * dim * 4)
    return np.load(path, mmap_mode="r")


def save_array(path: str, array: np.ndarray) -> None:
    """An .npy file, replacing `path` only once complete (files.WriteFailed if it cannot be written)."""
    def write(temporary):
        with open(temporary, "wb") as f:
            np.save(f, array)
    files.write_atomically(path, write, array.nbytes)


def main(argv=None):
    args = parse_args(argv)
    accelerator = distributed.make_accelerator(args)
    start = time.time()
    encoder = encoders.load_encoder(args.encoder, accelerator.device)
    encoder_dir = args.encoder if os.path.isdir(args.encoder) else os.path.dirname(args.encoder)

    # The files, listed once (by the main process) for all; a chunk each in turn, processes taking every n-th.
    def listed():
        os.makedirs(args.output_dir, exist_ok=True)
        found = list_images(os.path.abspath(args.data_dir))  # absolute: the same files for every node
        return found, work_id(encoder_dir, found, args.chunk_size, accelerator.mixed_precision)
    paths, work = distributed.on_main_process_for_all(accelerator, listed)
    distributed.probe_shared_directory(accelerator, args.output_dir)  # collective: every node joins the same parts
    parts = os.path.join(args.output_dir, "parts", work)
    chunks = math.ceil(len(paths) / args.chunk_size)
    mine = range(accelerator.process_index, chunks, accelerator.num_processes)
    done = [c for c in mine if read_part(part_path(parts, c)) is not None]
    accelerator.print(f"embedding {len(paths)} files of {args.data_dir} with {args.encoder} ({encoder.name}, "
                      f"{encoder.image_size} px, {encoder.feature_dim}-d) on {accelerator.num_processes} process(es)")
    if done:
        print(f"resuming: {len(done)} of this process's {len(mine)} chunk(s) already embedded in {parts}", flush=True)
    # The node's CPUs shared by its processes' decode pools.
    workers = max(1, decode_workers() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    with fork_pool(workers) as pool:
        for chunk in mine:
            if chunk in done:
                continue
            write_part(part_path(parts, chunk), embed_chunk(
                encoder, accelerator, pool, paths[chunk * args.chunk_size:(chunk + 1) * args.chunk_size],
                args.batch_size))

    # Collective: every chunk is written before the main process joins them. The others are done then: the main
    # process goes on alone, so no collective waits on its join and neighbours (hours for millions of images).
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if accelerator.is_main_process:
        write_outputs(args, encoder, accelerator.device, paths, parts, chunks, start)


def write_outputs(args, encoder, device, paths: list, parts: str, chunks: int, start: float) -> None:
    """Main process: the chunks joined in the files' order, the neighbours and their picture; the parts go."""
    kept, problems = [], []
    for chunk in range(chunks):
        part = read_part(part_path(parts, chunk))
        if part is None:
            raise UserError(f"chunk {chunk} is missing from {parts}: run the same command again")
        kept += [paths[chunk * args.chunk_size + i] for i in part["kept"].tolist()]
        problems += part["problems"].tolist()
    if not kept:
        raise UserError(f"no readable image in {args.data_dir!r} ({len(problems)} unreadable file(s)): "
                        f"pass a folder or list of images PIL can open")
    out = args.output_dir
    for name in OUTPUTS:  # an earlier run's: none may describe other rows than these
        files.remove(os.path.join(out, name))
    try:
        embeddings = join_parts(os.path.join(out, "embeddings.npy"), parts, chunks, len(kept), encoder.feature_dim)
        files.write_text(os.path.join(out, "files.txt"), "".join(f"{p}\n" for p in kept))
        files.write_text(os.path.join(out, "skipped.txt"), "".join(f"{p}\n" for p in problems))
        written, found_k = ["embeddings.npy", "files.txt", "skipped.txt"], 0
        if args.neighbours and len(kept) > 1:
            found_k = write_neighbours(args, encoder, device, embeddings, kept)
            written += OUTPUTS[3:7]
        files.write_json(os.path.join(out, "embed.json"), {
            "encoder": os.path.abspath(args.encoder), "model": encoder.name, "feature_dim": encoder.feature_dim,
            "image_size": encoder.image_size, "images": len(kept), "skipped": len(problems),
            "neighbours": int(found_k), "time_s": time.time() - start})
    except files.WriteFailed as e:
        raise UserError(e.problem + ": free space, or pass another --output-dir (finished chunks are kept)") from e
    files.remove(os.path.dirname(parts))
    if problems:
        print(f"skipped {len(problems)} unreadable file(s): listed in {os.path.join(out, 'skipped.txt')}", flush=True)
    print(f"embedded {len(kept)} images ({embeddings.shape[1]}-d) in {time.time() - start:.0f} s; written to {out}: "
          f"{', '.join(written)}", flush=True)


def write_neighbours(args, encoder, device, embeddings: np.ndarray, kept: list) -> list:
    found, similarity = neighbours.nearest_neighbours(torch.tensor(embeddings, device=device), args.neighbours)
    out = args.output_dir
    save_array(os.path.join(out, "neighbours.npy"), found.numpy())
    save_array(os.path.join(out, "neighbour_similarities.npy"), similarity.numpy())
    files.write_text(os.path.join(out, "neighbours.tsv"),
                     "".join("\t".join([kept[q], *(kept[i] for i in row)]) + "\n" for q, row in enumerate(found.tolist())))
    # The picture: a seeded choice of queries, decoded again at a size a person can see.
    shown = torch.randperm(len(kept), generator=torch.Generator().manual_seed(args.seed))[:args.neighbour_queries]
    size = max(encoder.image_size, 64)

    def pixels(i):  # grey where a file became unreadable since it was embedded
        image = decode_or_problem((kept[i], size))
        return torch.from_numpy(image.copy()).permute(2, 0, 1) if isinstance(image, np.ndarray) \
            else torch.full((3, size, size), 128, dtype=torch.uint8)
    queries = torch.stack([pixels(q) for q in shown.tolist()])
    beside = torch.stack([torch.stack([pixels(i) for i in found[q, :PICTURE_NEIGHBOURS].tolist()])
                          for q in shown.tolist()])
    from torchvision.utils import save_image
    save_image(neighbours.neighbour_grid(queries, beside), os.path.join(out, "neighbours.png"))
    return found.shape[1]


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
