"""Analysis of a turnphase dataset: probes, scrambled control, PCA + Fourier, figures, report.

Reads datasets only (folder or Hub id, in memory or streaming); never runs the model.
"""
