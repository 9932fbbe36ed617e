"""What a finished run leaves: OUTPUT_DIR/final/ (the encoder, ssl_scripts.models.encoders.load_encoder reads it) and
results.json, written by the main process; then one line of figures on the console."""
import json
import os
import sys

from ssl_scripts import UserError
from ssl_scripts.runtime import files
from ssl_scripts.runtime import distributed


def write_final(accelerator, args, encoder, results: dict) -> None:
    """final/ and results.json, main process only; a failed write (a full disk) stops every process with what to
    do (the last checkpoint is saved, so the same command writes them again)."""
    encoder = distributed.plain_module(accelerator, encoder)
    distributed.on_main_process_for_all(accelerator, lambda: _write(args, encoder, results))


def finished_results(accelerator, args, step: int):
    """results.json's values when OUTPUT_DIR holds a run that finished at `step` (its final/ and results.json
    written), said in one line; else None (every process gets the main process's answer)."""
    def read():
        path = os.path.join(args.output_dir, "results.json")
        try:
            with open(path) as f:
                results = json.load(f)
        except (OSError, ValueError):  # none yet, or unreadable: the final evaluation writes it again
            results = None
        if not (results and results.get("steps") == step and os.path.isdir(os.path.join(args.output_dir, "final"))):
            return None
        print(f"{args.output_dir} holds a finished run ({step} steps): its results are in {path}, nothing is "
              f"redone (a larger --max-steps or --epochs trains on; another --output-dir starts anew)", flush=True)
        return results
    return distributed.on_main_process_for_all(accelerator, read)


def _write(args, encoder, results: dict) -> None:
    from ssl_scripts.models.encoders import save_encoder
    then = (". Training is done and its last checkpoint saved: once there is room, the same command writes "
            "final/ and results.json (evaluating the final encoder again)")
    try:
        save_encoder(encoder, os.path.join(args.output_dir, "final"), trained_by=os.path.basename(sys.argv[0]),
                     task=args.task, steps=results["steps"])
        files.write_json(os.path.join(args.output_dir, "results.json"), results)
    except files.WriteFailed as e:
        raise UserError(e.problem + then) from e
    summary = "  ".join(f"{k}={v:.4f}" for k, v in results.items() if k.startswith("eval/"))
    print(f"done: {results['steps']} steps, {results['images_per_s']:.0f} images/s; {summary}")
    if "host_syncs_per_step" in results:
        print(f"host syncs per steady step: {results['host_syncs_per_step']:.2f} on average, "
              f"{results['host_syncs_max_step']} at most, over {results['host_syncs_steady_steps']} steps "
              f"({results['host_syncs_other_steps_total']} in all other steps)", flush=True)
    elif args.count_host_syncs:
        print("host syncs: not counted (--count-host-syncs needs a GPU)", flush=True)
