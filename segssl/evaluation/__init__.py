"""Whole-volume evaluation shared by validation, test, predict and report: inference, metrics
(with one empty-mask policy) and the results file."""

from segssl.evaluation.inference import (
    ensemble_predict_fn,
    label_map,
    predict_volume_2d,
    predict_volume_3d,
    probs_to_labels,
    resolve_device,
    stride_to_overlap,
)
from segssl.evaluation.metrics import (
    EMPTY_MASK_POLICY,
    METRIC_NAMES,
    aggregate,
    case_metrics,
    foreground_names,
    volume_diagonal,
)
from segssl.evaluation.results import (
    PER_CASE_COLUMNS,
    RESULTS_KEYS,
    case_rows,
    format_results_table,
    read_results,
    write_per_case_csv,
    write_results,
)

__all__ = [
    "EMPTY_MASK_POLICY",
    "METRIC_NAMES",
    "PER_CASE_COLUMNS",
    "RESULTS_KEYS",
    "aggregate",
    "case_metrics",
    "case_rows",
    "ensemble_predict_fn",
    "foreground_names",
    "format_results_table",
    "label_map",
    "predict_volume_2d",
    "predict_volume_3d",
    "probs_to_labels",
    "read_results",
    "resolve_device",
    "stride_to_overlap",
    "volume_diagonal",
    "write_per_case_csv",
    "write_results",
]
