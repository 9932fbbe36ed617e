"""The evaluation options (when the loop evaluates; the k-NN's and the linear probe's), checked as parsed and
again against the labelled set once it is loaded."""
import argparse

DEFAULT_EVAL_EVERY = 10  # epochs between evaluations when --eval-every is not given


def add_options(parser: argparse.ArgumentParser):
    group = parser.add_argument_group("evaluation")
    group.add_argument("--skip-eval", action="store_true",
                       help="no evaluation at all, not even at the end (throughput benchmarks, smoke tests)")
    group.add_argument("--eval-every", type=int, default=None,
                       help=f"epochs between evaluations, 0: only at the end (default: {DEFAULT_EVAL_EVERY}, and "
                            f"further apart where the training between two sees fewer images than an evaluation "
                            f"encodes; a value given is kept)")
    group.add_argument("--eval-at-start", action="store_true",
                       help="also evaluate the untrained encoder, logged as eval/*_init")
    group.add_argument("--eval-batch-size", type=int, default=512, help="images per forward pass of the evaluation")
    group.add_argument("--knn-k", type=int, default=20, help="neighbours of the weighted k-NN (eval/knn_acc)")
    group.add_argument("--knn-temperature", type=float, default=0.07,
                       help="the k-NN's neighbour weights are exp(similarity / this)")
    group.add_argument("--linear-probe-epochs", type=int, default=30,
                       help="epochs of the linear probe (eval/linear_probe_acc) on the frozen encoder's features")
    return group


def option_checks(args) -> list:
    """(ok, message) checks of add_options's options (see config.require)."""
    return [
        (not (args.skip_eval and args.eval_at_start), "--skip-eval and --eval-at-start contradict: drop one"),
        (args.eval_every is None or args.eval_every >= 0, f"--eval-every must be >= 0 (got {args.eval_every})"),
        (args.knn_k > 0, f"--knn-k must be >= 1 (got {args.knn_k})"),
        (args.knn_temperature > 0, f"--knn-temperature must be > 0 (got {args.knn_temperature})"),
        (args.linear_probe_epochs > 0, f"--linear-probe-epochs must be >= 1 (got {args.linear_probe_epochs})"),
    ]


def dataset_checks(args, labelled) -> list:
    """(ok, message) checks of the options against the labelled evaluation set (evaluation_set.load_evaluation), once loaded."""
    if labelled is None:
        return []
    memory = len(labelled.evaluation_train()[1])
    return [(args.knn_k <= memory, f"--knn-k {args.knn_k} is larger than the evaluation's train split "
                                   f"({memory} images): lower it")]
