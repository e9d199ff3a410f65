"""Mirrors A1111 1.10 modules/scripts.py (read at commit f3454b8 and the 1.10 ScriptRunner): AlwaysVisible, the
Script base class (the ScriptRunner sets is_txt2img / is_img2img, args_from / args_to on instances) and the
ScriptRunner's ``process(p)``, which runs every always-on script's ``process(p, *args)`` and catches any
Exception it raises, only reporting it on the console (``errors.report(f"Error running process: ...")``):
an error raised there never reaches the user. Forge and reForge keep the same runner."""

import logging

AlwaysVisible = object()
log = logging.getLogger("webui_stub.scripts")


class Script:
    is_txt2img = False
    is_img2img = False
    infotext_fields = None
    args_from = None
    args_to = None
    filename = "scripts/dode_webui.py"

    def title(self):
        raise NotImplementedError

    def show(self, is_img2img):
        return True

    def process(self, p, *args):
        pass


class ScriptRunner:
    def __init__(self, scripts=()):
        self.alwayson_scripts = list(scripts)

    def process(self, p):
        for script in self.alwayson_scripts:
            try:
                script_args = p.script_args[script.args_from:script.args_to]
                script.process(p, *script_args)
            except Exception:
                log.exception("Error running process: %s", script.filename)
