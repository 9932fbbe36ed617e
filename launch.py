"""`accelerate launch`, ending as the training does: ssl_scripts/runtime/launcher.py (installed: ssl-launch).

    python launch.py --config_file accelerate_configs/cpu.yaml --num_processes 2 train_rotation.py --dataset synthetic \
        --model simple_cnn --max-steps 100
"""
import sys

from ssl_scripts.runtime import launcher

if __name__ == "__main__":
    sys.exit(launcher.main())
