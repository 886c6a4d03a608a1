"""moa-profiler: model-aligned calibration sets and gradient attention-influence profiles.

Importing it registers nothing: call `register_profiling_attention` before profiling.
"""

from moa_profiler.attention import (
    PROFILE_ATTENTION,
    Recorder,
    profiling_attention,
    recording,
    register_profiling_attention,
)
from moa_profiler.calibration import CalibrationSettings, build_calibration
from moa_profiler.dataset import CalibrationSample, CalibrationSet, read_calibration, write_calibration
from moa_profiler.errors import CalibrationError, ProfilerError
from moa_profiler.influence import LayerInfluence, influence_rows, layer_influence
from moa_profiler.run import LengthSummary, RunSettings, profile_length
from moa_profiler.sample import InfluenceSettings, SampleInfluence, prepare_model, profile_sample

__version__ = "0.1.0"

__all__ = [
    "PROFILE_ATTENTION",
    "CalibrationError",
    "CalibrationSample",
    "CalibrationSet",
    "CalibrationSettings",
    "InfluenceSettings",
    "LayerInfluence",
    "LengthSummary",
    "ProfilerError",
    "Recorder",
    "RunSettings",
    "SampleInfluence",
    "__version__",
    "build_calibration",
    "influence_rows",
    "layer_influence",
    "prepare_model",
    "profile_length",
    "profile_sample",
    "profiling_attention",
    "read_calibration",
    "recording",
    "register_profiling_attention",
    "write_calibration",
]
