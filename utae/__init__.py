"""U-TAE for crop-type semantic segmentation of satellite image time series (PASTIS)."""

__version__ = "0.1.0"
