"""tuner: hyperparameter search for transfer learning of torchvision classifiers, on Optuna."""

__version__ = "0.1.0"
