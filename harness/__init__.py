"""lrwd: how weight decay interacts with the learning rate, measured."""

__version__ = "0.2.0"
