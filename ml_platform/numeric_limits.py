"""The numeric range every feature value must fit: what the ONNX graph computes in (float32).

The ONNX fast path casts features to float32, scikit-learn keeps float64: beyond
float32's range (|x| > 3.4028235e38) the cast gives infinity and the two runtimes
predict different classes. Such values (and non-finite ones) are refused at every
boundary: the serving request schema (422 naming the column) and the batch gate's
generated expectation suite, whenever the spec sets no tighter range.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ml_platform.spec import FeatureSpec

FLOAT32_MAX = 3.4028234663852886e38  # numpy.finfo(numpy.float32).max, exactly


def numeric_bounds(feature: FeatureSpec) -> tuple[float, float]:
    """The feature's valid closed range: the spec's min/max, clipped to the float32 range."""
    low = -FLOAT32_MAX if feature.min is None else max(float(feature.min), -FLOAT32_MAX)
    high = FLOAT32_MAX if feature.max is None else min(float(feature.max), FLOAT32_MAX)
    return low, high
