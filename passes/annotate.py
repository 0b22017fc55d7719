"""Annotate: write the recipe and the scheme table into the model's ``metadata_props``.

    model -> model + metadata_props{fp8onnx.version, fp8onnx.recipe, fp8onnx.scheme, ...}

``extra`` adds more keys as ``fp8onnx.<key>``; the compiler adds ``fp8onnx.tensors``: for
every inserted DequantizeLinear/FakeQuant output, the float tensor it stands for, its
kind (weight or activation), format, amax, scale or axis.

Netron shows metadata_props on the model sidebar, so whoever opens the FP8 model sees
how it was made; the recipe JSON can be fed back with ``--recipe`` to reproduce it.
Values are canonical JSON (sorted keys), so the same recipe gives the same bytes.
"""
from __future__ import annotations

import json

from fp8onnx import schemes
from fp8onnx.graph import set_metadata
from fp8onnx.passinfra import Pass, PassResult
from fp8onnx.recipe import Recipe

__all__ = ["Annotate"]


class Annotate(Pass):
    name = "annotate"

    def __init__(self, recipe: Recipe, extra: dict = None) -> None:
        super().__init__()
        self.recipe = recipe
        self.extra = dict(extra or {})

    def call(self, model):
        from fp8onnx import __version__

        props = {
            "fp8onnx.version": __version__,
            "fp8onnx.recipe": self.recipe.to_json(),
            "fp8onnx.scheme": json.dumps(schemes.get(self.recipe.scheme).to_dict(), sort_keys=True,
                                         separators=(",", ":")),
            **{f"fp8onnx.{k}": v if isinstance(v, str) else json.dumps(v, sort_keys=True)
               for k, v in self.extra.items()},
        }
        changed = False
        for key in sorted(props):
            changed |= set_metadata(model, key, props[key])
        return PassResult(model, changed)
