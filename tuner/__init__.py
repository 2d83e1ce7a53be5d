"""tuner: hyperparameter search for transfer learning of torchvision classifiers, on Optuna."""

__version__ = "0.1.0"


def load_model(folder):
    """The model in a folder written by `tuner retrain`: an nn.Module in eval mode with .classes
    and .preprocess (see tuner.shipping.load_model). Imported on call: `import tuner` stays light."""
    from tuner.shipping import load_model as load

    return load(folder)
