"""Analysis of a turnphase dataset: probes, scrambled control, PCA + Fourier, figures, report.

Reads datasets only (folder or Hub id, in memory or streaming); never runs the model.

    from turnphase.analysis import AnalysisConfig, analyze
    report = analyze(AnalysisConfig("data/smollm2", streaming=True), "report/")
    report["layers"]["13"]["probes"]["helix"]["real"]["r2"]   # schema: analysis/REPORT.md
"""

from turnphase.analysis.config import AnalysisConfig
from turnphase.analysis.report import analyze

__all__ = ["AnalysisConfig", "analyze"]
