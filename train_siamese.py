"""A Siamese network trained on image pairs (contrastive loss, or SimCLR's NT-Xent): the task is tasks/siamese.py,
the loop common/loop.py.

    accelerate launch --config_file accelerate_configs/cpu.yaml train_siamese.py --dataset synthetic \
        --model simple_cnn --max-steps 100
"""
from common import cli, loop
from tasks import TASKS

if __name__ == "__main__":
    cli.run(lambda: loop.train(TASKS["siamese"]))
