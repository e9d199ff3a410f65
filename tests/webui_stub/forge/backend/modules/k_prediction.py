"""Mirrors Forge's backend/modules/k_prediction.py (commit dfdcbab): only the class Forge's samplers test the model's
predictor against (``isinstance(model.inner_model.predictor, PredictionFlux)`` picks the flow-model branch)."""


class PredictionFlux:
    pass
