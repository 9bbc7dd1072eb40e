"""imagefit: from a folder of images to a tuned, reproducible, served ResNet classifier."""

__version__ = "0.1.0"
