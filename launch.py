"""`accelerate launch`, ending as the training does (common/launcher.py): the same options, e.g.

    python launch.py --config_file accelerate_configs/cpu.yaml --num_processes 2 train_rotation.py --dataset synthetic \
        --model simple_cnn --max-steps 100

Ctrl-C stops the run with a checkpoint (exit 3; the same command resumes), a second Ctrl-C at once; SIGTERM reaches
every training process; the last line is the training's own.
"""
import sys

from common import launcher

if __name__ == "__main__":
    sys.exit(launcher.main())
