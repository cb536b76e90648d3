"""The module artifact: its provenance record, its names, and what is measured of it (size, overlap, cost).

Nothing here imports the model classes; the metrics ask a model for its structure (`model.blocks()`), so every
layer above can use them.
"""

from .description import ModuleDescription, describe, register_describer
from .metrics import (
    OWN_VS_REST_METRICS,
    MacCounter,
    QualityMetric,
    count_macs,
    count_parameters,
    jaccard_index,
    masked_fraction,
    own_vs_rest_quality,
    weights_sha256,
)
from .naming import REPORT_NAME, REST_LABEL, check_directory_names, module_directory_name, parent_name
from .provenance import SCHEMA_VERSION, ModuleProvenance

__all__ = [
    "OWN_VS_REST_METRICS",
    "REPORT_NAME",
    "REST_LABEL",
    "SCHEMA_VERSION",
    "MacCounter",
    "ModuleDescription",
    "ModuleProvenance",
    "QualityMetric",
    "check_directory_names",
    "count_macs",
    "count_parameters",
    "describe",
    "jaccard_index",
    "masked_fraction",
    "module_directory_name",
    "own_vs_rest_quality",
    "parent_name",
    "register_describer",
    "weights_sha256",
]
