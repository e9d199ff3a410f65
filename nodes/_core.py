"""dode_core, wherever the plugin was imported from: ComfyUI imports the plugin folder as a package under a
path-derived name, so dode_core is its subpackage there; a plain checkout on sys.path has it top level."""

try:
    from .. import dode_core
    from ..dode_core import file_format, file_rules, naming, rules, text  # noqa: F401  (submodules the nodes use)
except ImportError:  # nodes imported as a top-level package
    import dode_core
    import dode_core.file_format  # noqa: F401
    import dode_core.file_rules  # noqa: F401
    import dode_core.naming  # noqa: F401
    import dode_core.rules  # noqa: F401
    import dode_core.text  # noqa: F401

__all__ = ["dode_core"]
