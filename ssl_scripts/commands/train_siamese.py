"""A Siamese network trained on image pairs (contrastive loss, or SimCLR's NT-Xent): the task is
ssl_scripts/tasks/siamese.py, the loop ssl_scripts/loop.py. `train_siamese.py` and `ssl-train-siamese` run it:

    accelerate launch --config_file accelerate_configs/cpu.yaml train_siamese.py --dataset synthetic \
        --model simple_cnn --max-steps 100
"""
from ssl_scripts.runtime import cli


def main():
    from ssl_scripts.tasks import TASKS  # imported under cli.run: a Ctrl-C while torch loads is one line too
    from ssl_scripts import loop
    loop.train(TASKS["siamese"])


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
