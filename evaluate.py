"""RotNet's per-block evaluation of an exported encoder: ssl_scripts/commands/evaluate.py (installed: ssl-evaluate).

    python evaluate.py --encoder runs/rotation/final --dataset cifar10
"""
from ssl_scripts.commands.evaluate import run

if __name__ == "__main__":
    run()
