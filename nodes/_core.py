"""dode_core, wherever the plugin was imported from: ComfyUI imports the plugin folder as a package under a
path-derived name, so dode_core is its subpackage there; a plain checkout on sys.path has it top level."""

try:
    from .. import dode_core
    from ..dode_core import naming, rules  # noqa: F401  (dode_core.naming and .rules, for the nodes)
except ImportError:  # nodes imported as a top-level package
    import dode_core
    import dode_core.naming  # noqa: F401
    import dode_core.rules  # noqa: F401

__all__ = ["dode_core"]
