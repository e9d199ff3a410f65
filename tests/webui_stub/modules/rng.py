"""Mirrors A1111 modules/rng.py (commit 0d5dc9a; Forge and reForge keep it): ImageRNG holds one torch.Generator
per seed; the first next() is the start noise (first()), every later next() draws a full batch of fresh
noise of the same shape from those generators (randn_without_seed). CPU generators only (randn_source "CPU");
no subseeds, no seed resize."""

import torch


class ImageRNG:
    def __init__(self, shape, seeds):
        self.shape = tuple(shape)
        self.seeds = seeds
        self.generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
        self.is_first = True

    def first(self):
        return torch.stack([torch.randn(self.shape, generator=generator) for generator in self.generators])

    def next(self):
        if self.is_first:
            self.is_first = False
            return self.first()
        return torch.stack([torch.randn(self.shape, generator=generator) for generator in self.generators])
