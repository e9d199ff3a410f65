"""Mirrors A1111 1.10 modules/script_callbacks.py: on_ui_settings(callback) registers a callback (the real one
also takes name=, since 1.8)."""

ui_settings_callbacks = []


def on_ui_settings(callback, *, name=None):
    ui_settings_callbacks.append(callback)
