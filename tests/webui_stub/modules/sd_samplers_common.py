"""Mirrors A1111 1.10 modules/sd_samplers_common.py: SamplerData (a namedtuple with total_steps), Sampler (the
base class whose existence marks >= 1.6) and InterruptedException (a BaseException)."""

from collections import namedtuple


class SamplerData(namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])):
    def total_steps(self, steps):
        if self.options.get("second_order", False):
            steps = steps * 2
        return steps


class InterruptedException(BaseException):
    pass


class Sampler:
    def __init__(self, funcname):
        self.funcname = funcname
        self.func = funcname
        self.p = None
        self.config = None
