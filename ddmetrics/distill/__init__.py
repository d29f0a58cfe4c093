"""The generic distiller, its two matching strategies, method presets and their building blocks."""
from .distiller import STRATEGIES, Distiller
from .presets import PRESETS, DistillConfig, preset

__all__ = ["Distiller", "DistillConfig", "PRESETS", "STRATEGIES", "preset"]
