"""dode_core, wherever the plugin was imported from: ComfyUI imports the plugin folder as a package under a
path-derived name, so dode_core is its subpackage there; a plain checkout on sys.path has it top level."""

try:
    from .. import dode_core
except ImportError:  # nodes imported as a top-level package
    import dode_core

__all__ = ["dode_core"]
