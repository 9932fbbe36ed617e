"""Self-supervised rotation prediction (RotNet): ssl_scripts/commands/train_rotation.py (installed: ssl-train-rotation).

    python train_rotation.py --dataset synthetic --model simple_cnn --max-steps 100
"""
from ssl_scripts.commands.train_rotation import run

if __name__ == "__main__":
    run()
