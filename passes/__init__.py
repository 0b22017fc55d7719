"""The passes of the fp8onnx compiler, one per module; installed as ``fp8onnx.passes``.

Preparation passes, in the order ``fp8onnx.api.prepare`` runs them (LiftConstants first
keeps large weights out of the nodes the version converter copies)::

    from fp8onnx.passes import *
    PassManager([LiftConstants(), UpgradeOpset(19), FoldConstants(), InferShapes(),
                 NameNodes(), TopologicalSort()])(model)
"""
from .lift_constants import LiftConstants
from .upgrade_opset import UpgradeOpset
from .infer_shapes import InferShapes
from .fold_constants import FoldConstants
from .name_nodes import NameNodes
from .toposort import TopologicalSort
from .insert_qdq import InsertQDQ
from .annotate import Annotate
from .bn_calibrate import BatchNormCalibration
from .inline_if import InlineConstantIf
from .fix_inputs import FixInputs
from .emulate_qdq import EmulateQDQ

__all__ = [
    "LiftConstants",
    "UpgradeOpset",
    "InferShapes",
    "FoldConstants",
    "NameNodes",
    "TopologicalSort",
    "InsertQDQ",
    "Annotate",
    "BatchNormCalibration",
    "InlineConstantIf",
    "FixInputs",
    "EmulateQDQ",
]
