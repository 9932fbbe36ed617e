"""Embeddings of a folder of images with a trained encoder: ssl_scripts/commands/embed.py (installed: ssl-embed).

    accelerate launch embed.py --encoder runs/x/final --data-dir PHOTOS --neighbours 5
"""
from ssl_scripts.commands.embed import run

if __name__ == "__main__":
    run()
