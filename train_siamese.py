"""A Siamese network on image pairs: ssl_scripts/commands/train_siamese.py (installed: ssl-train-siamese).

    python train_siamese.py --dataset synthetic --model simple_cnn --max-steps 100
"""
from ssl_scripts.commands.train_siamese import run

if __name__ == "__main__":
    run()
