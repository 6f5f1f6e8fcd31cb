"""Normalizing flows: the registry :data:`FLOWS` and the factory :func:`make_flow`.

Each flow family lives in its own module and registers its layer class on import.
"""

from nfvi.flows import householder, iaf, nice, planar, radial, realnvp, spline, sylvester  # noqa: F401  (registration on import)
from nfvi.flows.base import (
    FLOWS,
    AmortizedParams,
    FlowLayer,
    FlowStack,
    GlobalParams,
    InverseNotAvailable,
    ParamSource,
    make_flow,
    register_flow,
)

__all__ = [
    "FLOWS",
    "AmortizedParams",
    "FlowLayer",
    "FlowStack",
    "GlobalParams",
    "InverseNotAvailable",
    "ParamSource",
    "make_flow",
    "register_flow",
]
