"""Self-supervised rotation prediction (RotNet, Gidaris et al. 2018): the task is ssl_scripts/tasks/rotation.py, the
loop ssl_scripts/loop.py. `train_rotation.py` and `ssl-train-rotation` run it:

    accelerate launch --config_file accelerate_configs/cpu.yaml train_rotation.py --dataset synthetic \
        --model simple_cnn --max-steps 100
"""
from ssl_scripts.runtime import cli


def main():
    from ssl_scripts.tasks import TASKS  # imported under cli.run: a Ctrl-C while torch loads is one line too
    from ssl_scripts import loop
    loop.train(TASKS["rotation"])


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
