"""The child of the kill-during-save test: saves λ files into a folder until it is killed (SIGKILL, at a random
moment). Small, medium and large files alternate, so kills land in every phase of a save."""

import torch

from dode_core import Lambdas

SIZES = ((3, 2, 0), (1000, 8, 16), (200, 3, 4))  # calls, history, channels (0: one λ for all channels)


def lambdas_of_size(calls: int, history: int, channels: int, seed: int) -> Lambdas:
    generator = torch.Generator().manual_seed(seed)
    shape = (calls, history, channels) if channels else (calls, history)
    lambdas = torch.rand(shape, generator=generator) * 2 - 1
    for k in range(min(calls, history)):
        lambdas[k, k:] = 0  # call k has only k earlier outputs
    sigmas = torch.linspace(80.0, 0.01, calls, dtype=torch.float64).tolist()
    return Lambdas(lambdas, tuple(sigmas), {"base_sampler": "euler", "steps": str(calls)})


def save_forever(folder: str, seed: int) -> None:
    files = [lambdas_of_size(*size, seed=seed) for size in SIZES]
    count = 0
    while True:
        files[count % len(files)].save_new(folder, "killed", round=str(seed), count=str(count))
        count += 1
