"""The pretext tasks by name. A task is one module here (a tasks.task.Task subclass) and one entry in TASKS;
tasks.register adds one from anywhere (a test, a user's own module) before the loop runs it."""
from ssl_scripts.tasks.rotation import Rotation
from ssl_scripts.tasks.siamese import Siamese

TASKS = {task.name: task for task in (Rotation, Siamese)}


def register(task):
    """Adds a Task subclass under its name; returns it (usable as a class decorator)."""
    TASKS[task.name] = task
    return task
