"""The causal test: steer a model along the phase directions an analysis found, against random ones.

    from turnphase.steering import SteerConfig, steer
    result = steer(SteerConfig("data/smollm2", "report/smollm2", layers=[19], out="steer/smollm2"))
    result["findings"]                          # in words; schema of the rest: steering/STEER.md

Uses the builders' model runtime (loading, KV cache reuse) and nnsight for the edits; the analysis
package never loads a model.
"""

from turnphase.steering.config import SteerConfig
from turnphase.steering.edits import Ablate, Add, Rotate
from turnphase.steering.run import steer

__all__ = ["Ablate", "Add", "Rotate", "SteerConfig", "steer"]
