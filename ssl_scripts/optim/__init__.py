"""--optimizer and the learning-rate schedules: the training's, and the evaluation classifiers'."""
