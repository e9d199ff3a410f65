"""Mirrors A1111 1.10 modules/scripts.py: AlwaysVisible and the Script base class (the attributes the
ScriptRunner sets on instances, is_txt2img / is_img2img, default to False)."""

AlwaysVisible = object()


class Script:
    is_txt2img = False
    is_img2img = False
    infotext_fields = None

    def title(self):
        raise NotImplementedError

    def show(self, is_img2img):
        return True

    def process(self, p, *args):
        pass
