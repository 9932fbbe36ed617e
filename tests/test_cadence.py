"""The Run's cadence (ssl_scripts/training/cadence.py): which steps log, checkpoint, check and evaluate."""
from types import SimpleNamespace

from ssl_scripts.evaluation.options import DEFAULT_EVAL_EVERY
from ssl_scripts.training.cadence import Cadence


def options(**changed):
    return SimpleNamespace(**{"log_every": 2, "checkpoint_every": 3, "eval_every": None, "skip_eval": False,
                              **changed})


def due(decide, steps=range(1, 11)):
    return [step for step in steps if decide(step)]


def test_logs_and_checkpoints_fall_on_their_multiples_and_the_last_step():
    cadence = Cadence(options(), total_steps=10, num_processes=2)
    assert due(cadence.due_log) == [2, 4, 6, 8, 10]
    assert due(cadence.due_checkpoint) == [3, 6, 9, 10]


def test_the_first_step_after_a_resume_is_checked_and_one_process_checks_for_stops_every_step():
    # resumed from step 4: step 5 agrees on a notice that came while the data loaded
    cadence = Cadence(options(), total_steps=10, num_processes=2, first_step=5)
    assert due(cadence.due_finite_check) == [2, 3, 4, 5, 6, 8, 9, 10]
    assert due(cadence.due_stop_check) == [2, 3, 4, 5, 6, 8, 9, 10]  # with the device read, never between
    assert due(Cadence(options(), 10, num_processes=1).due_stop_check) == list(range(1, 11))


def test_evaluations_every_n_epochs_and_the_default_spaced_by_the_images_they_encode(capsys):
    every_two = Cadence(options(eval_every=2), 10, 1)
    assert [every_two.due_evaluation(epoch, 0, 10 ** 6, True) for epoch in range(4)] == [False, True, False, True]
    assert not Cadence(options(eval_every=2, skip_eval=True), 10, 1).due_evaluation(1, 0, 0, True)
    default, epoch = Cadence(options(), 10, 1), DEFAULT_EVAL_EVERY - 1
    assert default.due_evaluation(epoch, images_trained=1000, images_evaluated=1000, is_main_process=True)
    assert not default.due_evaluation(epoch, 999, 1000, True) and not default.due_evaluation(epoch, 999, 1000, True)
    assert capsys.readouterr().out.count("evaluations further apart") == 1  # said once
