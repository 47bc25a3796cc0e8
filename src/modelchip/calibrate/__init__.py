"""Calibration: measure a backend on its device and write a chip profile the cost model can use."""
