"""The model options (--model, --compile, --sync-bn) and each model's optimizer recipe (encoders.MODELS): said in
--help, and the default of the recipe's options left unset."""
import argparse

from ssl_scripts.models import encoders


def add_options(parser: argparse.ArgumentParser):
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="resnet18",
                       help=f"the encoder: {', '.join(encoders.MODELS)}, or torchvision:NAME, any torchvision "
                            f"classification model by name (e.g. torchvision:efficientnet_b0; docs/models.md)")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the model (Accelerate's dynamo backend 'inductor'); first steps are slow")
    group.add_argument("--sync-bn", action="store_true",
                       help="batch norm statistics over the global batch (torch.nn.SyncBatchNorm; needs GPUs "
                            "under accelerate launch). Without it each process normalizes by its own micro-batch, so "
                            "a model with batch norm (resnet18, nin) trains differently on another number of processes")
    return group


def recipe_defaults(option: str) -> str:
    """The defaults of a recipe option by model, for its --help: 'sgd (simple_cnn: adamw)'."""
    values = {name: spec.recipe[option] for name, spec in encoders.MODELS.items()}
    usual = max(set(values.values()), key=list(values.values()).count)
    others = ", ".join(f"{name}: {value}" for name, value in values.items() if value != usual)
    return f"{usual} ({others})" if others else str(usual)


def option_defaults(args) -> dict:
    """The model's recipe (optimizer, lr, schedule) for those of its options left unset: explicit options win."""
    return {name: value for name, value in encoders.model_spec(args.model).recipe.items()
            if getattr(args, name) is None}


def option_checks(args) -> list:
    """None beyond option_defaults's: an unknown --model is refused as its recipe is read."""
    return []
