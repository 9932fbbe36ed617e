"""Self-supervised rotation prediction (RotNet, Gidaris et al. 2018): the task is tasks/rotation.py, the loop
common/loop.py.

    accelerate launch --config_file accelerate_configs/cpu.yaml train_rotation.py --dataset synthetic \
        --model simple_cnn --max-steps 100
"""
from common import cli, loop
from tasks import TASKS

if __name__ == "__main__":
    cli.run(lambda: loop.train(TASKS["rotation"]))
