"""Mirrors A1111 1.10 modules/paths.py: models_path (tests point it at a temporary folder)."""

models_path = "/nonexistent/models"
