"""Analysis of a turnphase dataset: probes, baselines, nulls, colour wheels, rotation tests, verdicts.

Reads datasets only (folder or Hub id, in memory or streaming); never runs the model.

    from turnphase.analysis import AnalysisConfig, analyze
    result = analyze(AnalysisConfig("data/smollm2", streaming=True))        # nothing written
    result.report["layers"]["13"]["probes"]["phase"]["helix"]["acts"]["real"]["r2"]  # REPORT.md
    result.directions.layers[13]                                            # probes and planes
    analyze(AnalysisConfig("data/smollm2"), "report/")                      # the report folder too
"""

from turnphase.analysis.config import AnalysisConfig
from turnphase.analysis.directions import Directions
from turnphase.analysis.report import AnalysisResult, analyze

__all__ = ["AnalysisConfig", "AnalysisResult", "Directions", "analyze"]
