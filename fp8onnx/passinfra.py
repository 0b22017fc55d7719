"""Pass infrastructure: a pass declares ``requires``, ``call`` and ``ensures``.

A pass takes an ``onnx.ModelProto`` and returns a :class:`PassResult` saying whether it
changed the model. ``Pass.__call__`` runs ``requires`` (raising
:class:`~fp8onnx.errors.PreconditionError`), then ``call``, then ``ensures``; an
unexpected exception inside ``call`` becomes a :class:`~fp8onnx.errors.PassError` naming
the pass, chained with ``from e``. A :class:`PassManager` runs a pipeline and is itself a
pass, so pipelines nest.

Passes edit the model in place (the public entry point :func:`fp8onnx.compile` copies the
user's model once before any pass runs). ``modified`` is measured, not assumed: each pass
compares what it did, and running a pass twice reports ``modified=False`` the second time.

Writing a pass::

    class DropDocStrings(Pass):
        '''Clears every node's doc_string.'''
        def call(self, model):
            changed = False
            for node in model.graph.node:
                if node.doc_string:
                    node.doc_string = ""
                    changed = True
            return PassResult(model, changed)

    result = PassManager([DropDocStrings()])(model)

Instruments observe a pipeline without changing it: :class:`Timing` logs and records
the time of each pass, :class:`DumpAfter` saves the model after each pass for Netron,
and ``PassManager(skip={"name"})`` skips passes by name.
"""
from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import onnx

from .errors import Fp8OnnxError, PassError, PreconditionError

__all__ = [
    "Pass", "PassResult", "PassManager", "Instrument", "Timing", "DumpAfter", "PreconditionError",
]

log = logging.getLogger("fp8onnx.passes")


@dataclass
class PassResult:
    """What a pass returns: the (possibly new) model and whether anything changed."""

    model: onnx.ModelProto
    modified: bool


class Pass:
    """Base class of every pass. Subclasses implement :meth:`call`.

    Settings go to ``__init__``; state that one run builds up is reset at the start of
    ``call``, so a pass object can be run on many models.
    """

    #: Name used in logs, reports, ``--skip`` and dump file names; defaults to the class name.
    name: str = ""

    def __init__(self) -> None:
        if not self.name:
            self.name = _snake(type(self).__name__)

    def requires(self, model: onnx.ModelProto) -> None:
        """Raise :class:`PreconditionError` when ``model`` is not fit for this pass."""

    def call(self, model: onnx.ModelProto) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def ensures(self, model: onnx.ModelProto) -> None:
        """Raise :class:`PreconditionError` when the pass failed to establish its promise."""

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        self.requires(model)
        try:
            result = self.call(model)
        except Fp8OnnxError:
            raise
        except Exception as e:
            raise PassError(self.name, f"{type(e).__name__}: {e}") from e
        if not isinstance(result, PassResult):
            raise PassError(self.name, f"call() returned {type(result).__name__}, not PassResult")
        self.ensures(result.model)
        return result

    def __repr__(self) -> str:
        return f"<pass {self.name}>"


class Instrument:
    """Hooks around each pass a :class:`PassManager` runs. Override what you need."""

    def before(self, pass_: Pass, model: onnx.ModelProto, index: int) -> None:
        pass

    def after(self, pass_: Pass, result: PassResult, index: int) -> None:
        pass


class Timing(Instrument):
    """Records ``(pass name, seconds, modified)`` for each pass run, and logs it."""

    def __init__(self) -> None:
        self.records: list = []
        self._start = 0.0

    def before(self, pass_, model, index):
        self._start = time.perf_counter()

    def after(self, pass_, result, index):
        seconds = time.perf_counter() - self._start
        self.records.append((pass_.name, seconds, result.modified))
        log.info("%-28s %7.3f s  %s", pass_.name, seconds, "modified" if result.modified else "unchanged")


class DumpAfter(Instrument):
    """Saves the model after every pass as ``<dir>/<NN>_<pass>.onnx``, to open in Netron.

    Models over 2 GB are written with external data beside them (fp8onnx.modelio).
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def after(self, pass_, result, index):
        from .modelio import save_model  # handles models over 2 GB, where ByteSize() fails

        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, f"{index:02d}_{pass_.name}.onnx")
        save_model(result.model, path)
        log.info("dumped model after %s to %s", pass_.name, path)


class PassManager(Pass):
    """Runs passes in order; itself a pass, so pipelines nest.

    ``skip`` names passes not to run. ``instruments`` observe every pass. ``fixed_point``
    repeats the pipeline until no pass modifies the model (at most ``max_iterations``).
    """

    def __init__(
        self,
        passes: Sequence[Pass],
        *,
        instruments: Iterable[Instrument] = (),
        skip: Iterable[str] = (),
        fixed_point: bool = False,
        max_iterations: int = 8,
        name: Optional[str] = None,
    ) -> None:
        self.name = name or "pass_manager"
        super().__init__()
        self.passes = list(passes)
        self.instruments = list(instruments)
        self.skip = set(skip)
        self.fixed_point = fixed_point
        self.max_iterations = max_iterations

    def call(self, model):
        modified_any = False
        counter = 0
        for _ in range(self.max_iterations if self.fixed_point else 1):
            modified_round = False
            for p in self.passes:
                if p.name in self.skip:
                    log.info("%-28s skipped", p.name)
                    continue
                for inst in self.instruments:
                    inst.before(p, model, counter)
                result = p(model)
                for inst in self.instruments:
                    inst.after(p, result, counter)
                counter += 1
                model = result.model
                modified_round |= result.modified
            modified_any |= modified_round
            if not modified_round:
                break
        return PassResult(model, modified_any)

    def __repr__(self) -> str:
        return f"<PassManager {[p.name for p in self.passes]}>"


def _snake(name: str) -> str:
    name = re.sub(r"Pass$", "", name) or name
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()

