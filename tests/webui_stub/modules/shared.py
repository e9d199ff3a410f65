"""Mirrors the few objects of A1111 1.10 modules/shared.py (opts, state, sd_model, total_tqdm, cmd_opts: only
``--loglevel``, default None as in modules/cmd_args.py),
modules/options.py (OptionInfo) and modules/shared_state.py (State: job_count / job_no / nextjob,
sampling_step / sampling_steps, textinfo, interrupted / skipped / interrupt()) that the adapter and the
stand-in processing loop read; values are the defaults a fresh install has. ``sd_model`` is set by the tests
to a denoiser ``model(x, sigma) -> denoised`` with ``sigma_min`` / ``sigma_max`` attributes."""

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


class State:
    # modules/shared_state.py (1.10)
    def __init__(self):
        self.interrupted = False
        self.skipped = False
        self.stopping_generation = False
        self.job = ""
        self.job_no = 0
        self.job_count = 0
        self.sampling_step = 0
        self.sampling_steps = 0
        self.textinfo = None

    def interrupt(self):
        self.interrupted = True

    def nextjob(self):
        self.job_no += 1
        self.sampling_step = 0

    def begin(self, job="(unknown)"):
        self.__init__()
        self.job = job


opts = Options()
state = State()
sd_model = None
cmd_opts = SimpleNamespace(loglevel=None)
total_tqdm = SimpleNamespace(update=lambda: None, updateTotal=lambda total: None, clear=lambda: None)
