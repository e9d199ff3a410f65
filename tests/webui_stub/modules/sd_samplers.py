"""Mirrors A1111 1.10 modules/sd_samplers.py (commit c19d044): the registry (all_samplers, all_samplers_map,
samplers, samplers_for_img2img, samplers_map, samplers_hidden), set_samplers() and the functools.cache'd
get_sampler_and_scheduler() that splits a trailing scheduler name off a sampler name, find_sampler_config() and
create_sampler() (the constructor is called with the model, then ``sampler.config`` is set).

``forge_add_sampler`` mirrors newer Forge's ``add_sampler`` (dedupe by name, rebuild the map, set_samplers);
A1111 has no such function, so the tests install it as ``add_sampler`` only for the Forge case."""

import functools

from modules import sd_samplers_kdiffusion, sd_schedulers, shared

all_samplers = [*sd_samplers_kdiffusion.samplers_data_k_diffusion]
all_samplers_map = {x.name: x for x in all_samplers}

samplers: list = []
samplers_for_img2img: list = []
samplers_map: dict = {}
samplers_hidden: set = set()


def set_samplers():
    global samplers, samplers_for_img2img, samplers_hidden
    samplers_hidden = set(shared.opts.hide_samplers)
    samplers = all_samplers
    samplers_for_img2img = all_samplers
    samplers_map.clear()
    for sampler in all_samplers:
        samplers_map[sampler.name.lower()] = sampler.name
        for alias in sampler.aliases:
            samplers_map[alias.lower()] = sampler.name


def forge_add_sampler(sampler):
    global all_samplers_map
    if sampler.name not in [x.name for x in all_samplers]:
        all_samplers.append(sampler)
        all_samplers_map = {x.name: x for x in all_samplers}
        set_samplers()


def find_sampler_config(name):
    return all_samplers_map.get(name, None) if name is not None else all_samplers[0]


def create_sampler(name, model):
    config = find_sampler_config(name)
    assert config is not None, f"bad sampler name: {name}"
    sampler = config.constructor(model)
    sampler.config = config
    return sampler


@functools.cache
def get_sampler_and_scheduler(sampler_name, scheduler_name, *, convert_automatic=True):
    default_sampler = samplers[0]
    found_scheduler = sd_schedulers.schedulers_map.get(scheduler_name, sd_schedulers.schedulers[0])
    name = sampler_name or default_sampler.name
    for scheduler in sd_schedulers.schedulers:
        for option in [scheduler.label, scheduler.name, *(scheduler.aliases or [])]:
            if name.endswith(" " + option):
                found_scheduler = scheduler
                name = name[0:-(len(option) + 1)]
                break
    sampler = all_samplers_map.get(name, default_sampler)
    if convert_automatic and sampler.options.get("scheduler", None) == found_scheduler.name:
        found_scheduler = sd_schedulers.schedulers[0]
    return sampler.name, found_scheduler.label


set_samplers()

