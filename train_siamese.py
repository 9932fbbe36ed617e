"""A Siamese network trained on image pairs (contrastive loss, or SimCLR's NT-Xent): the task is tasks/siamese.py,
the loop common/loop.py.

    accelerate launch --config_file accelerate_configs/cpu.yaml train_siamese.py --dataset synthetic \
        --model simple_cnn --max-steps 100
"""
from common import cli


def main():
    from common import loop  # imported under cli.run: a Ctrl-C while torch loads is one line too
    from tasks import TASKS
    loop.train(TASKS["siamese"])


if __name__ == "__main__":
    cli.run(main)
