"""spottune: few-shot adaptation of brain-MRI segmentation U-Nets with SpotTUnet."""

__version__ = "0.1.0"
