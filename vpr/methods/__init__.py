"""Place-recognition methods, chosen by name: each builds a map from reference images and scores queries."""

from vpr.methods.base import METHODS, PlaceMethod, create_method, register_method
from vpr.methods.cnn import GeMMethod, NetVLADMethod
from vpr.methods.densevlad import DenseVLADMethod
from vpr.methods.sad import SADMethod
from vpr.methods.snn import SNNEnsembleMethod, SNNModularMethod

__all__ = [
    "METHODS", "DenseVLADMethod", "GeMMethod", "NetVLADMethod", "PlaceMethod", "SADMethod", "SNNEnsembleMethod",
    "SNNModularMethod", "create_method", "register_method",
]
