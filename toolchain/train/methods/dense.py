"""Dense certified training: every weight exists from start to end (the baseline)."""

from toolchain.train.methods.base import Method


class Dense(Method):
    name = "dense"


METHOD = Dense
