"""Mirrors the few objects of A1111 1.10 modules/shared.py (opts, state) and modules/options.py (OptionInfo)
that the adapter reads; values are the defaults a fresh install has."""

from types import SimpleNamespace


class OptionInfo:
    # modules/options.py (1.10): OptionInfo(default, label, component, component_args, onchange, section, refresh, ...)
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, **kwargs):
        self.default, self.label, self.component, self.component_args = default, label, component, component_args
        self.section, self.refresh, self.kwargs = section, refresh, kwargs


class Options:
    # modules/options.py: opts.data holds the values, add_option registers a setting with its default
    def __init__(self):
        self.data = {"hide_samplers": []}
        self.data_labels = {}

    def add_option(self, key, info):
        self.data_labels[key] = info
        self.data.setdefault(key, info.default)

    def __getattr__(self, name):
        try:
            return self.__dict__["data"][name]
        except KeyError:
            raise AttributeError(name) from None


opts = Options()
# modules/shared_state.py (1.10): State.interrupted / skipped / sampling_step / sampling_steps / textinfo
state = SimpleNamespace(interrupted=False, skipped=False, sampling_step=0, sampling_steps=0, textinfo=None)
sd_model = None
