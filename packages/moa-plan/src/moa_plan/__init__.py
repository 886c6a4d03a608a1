"""moa-plan: the contract every moa package shares.

Elastic-rule math, the plan schema, the profile and dataset file formats, and the errors.
Importing it does nothing else (no registration, no I/O).
"""

from moa_plan._version import __version__
from moa_plan.budget import Budget, check_budget
from moa_plan.errors import MoaError, ModelSourceError, PlanError, ProfileError, RecordsError
from moa_plan.fingerprint import ModelFingerprint
from moa_plan.gguf import GGUFHeader, GGUFTensorInfo, check_gguf, fingerprint_from_gguf, read_gguf_header
from moa_plan.io import atomic_write, atomic_write_bytes, atomic_write_text
from moa_plan.model_source import ModelSource, resolve_model_source
from moa_plan.original import export_moa_json, import_moa_json
from moa_plan.plan import FORMAT_VERSION, Plan, Provenance, load_plan, save_plan
from moa_plan.profile import (
    PROFILE_FORMAT_VERSION,
    Profile,
    load_profile,
    merge_profiles,
    mix_profiles,
    save_profile,
    shape_profile,
)
from moa_plan.records import Record, read_records, write_records
from moa_plan.rules import (
    DEFAULT_BLOCK,
    DEFAULT_SINK,
    ElasticRule,
    attention_density,
    kv_density,
    mask_area,
    span,
    window,
)

__all__ = [
    "DEFAULT_BLOCK",
    "DEFAULT_SINK",
    "FORMAT_VERSION",
    "PROFILE_FORMAT_VERSION",
    "Budget",
    "ElasticRule",
    "GGUFHeader",
    "GGUFTensorInfo",
    "MoaError",
    "ModelFingerprint",
    "ModelSource",
    "ModelSourceError",
    "Plan",
    "PlanError",
    "Profile",
    "ProfileError",
    "Provenance",
    "Record",
    "RecordsError",
    "__version__",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "attention_density",
    "check_budget",
    "check_gguf",
    "export_moa_json",
    "fingerprint_from_gguf",
    "import_moa_json",
    "kv_density",
    "load_plan",
    "load_profile",
    "merge_profiles",
    "mix_profiles",
    "mask_area",
    "read_gguf_header",
    "read_records",
    "resolve_model_source",
    "save_plan",
    "save_profile",
    "shape_profile",
    "span",
    "window",
    "write_records",
]
