"""TEMPLATE: copy this file to add a dlcbench backend. See docs/adding-a-backend.md.

It runs as it is: the placeholder "library" is ``onnx.reference`` (the ONNX
specification's pure-NumPy reference implementation), so the conformance suite
passes before you change anything. Replace every ``TODO`` with your library,
keep the shape of each method, and keep library imports inside methods:
``import dlcbench.compilers`` must import no backend library.

Register it in one of three ways:

* in-tree: a line in ``dlcbench/compilers/registry.py``'s ``_BUILTIN``;
* a package of your own: ``[project.entry-points."dlcbench.backends"] mybackend = "mypkg.adapter:MyBackendAdapter"``
  (see ``examples/dlcbench-example-backend``);
* for one process tree: ``DLCBENCH_BACKENDS="mybackend=adapter_template:MyBackendAdapter"``.

Then: ``python -m pytest --pyargs dlcbench.compilers.testing -k mybackend``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlcbench.compilers.base import Adapter, CompileOptions, Manifest, Session, package_version
from dlcbench.errors import BackendRuntimeError, BadInputError, UnsupportedOpError, one_line

@dataclass
class MyBackendOptions(CompileOptions):
    """Backend-specific options: dataclass fields with defaults, validated in ``__post_init__``.

    ``scripts/compile.py --option strict=true`` sets them; the manifest records them.

    Attributes:
        strict: TODO: describe your option (here: check every result against the graph's shape annotations).
    """

    strict: bool = False

    def __post_init__(self):
        super().__post_init__()  # checks target, precision, threads, batch
        if not isinstance(self.strict, bool):  # one-line errors that name the valid choices
            raise BadInputError(f"strict must be true or false, got {self.strict!r}; valid: true, false")


class MyBackendSession(Session):
    """A loaded artifact. ``run`` takes and returns numpy arrays by name; ``close`` frees what it holds.

    Two timed regions: ``run`` is ``end_to_end`` (numpy in, numpy out); ``prepare`` + ``run_prepared`` are
    ``resident`` (inputs staged where the library runs, outputs left there), what compiler comparisons time.
    """

    # TODO: True once prepare()/run_prepared() below keep the inputs and outputs in your library. Left False,
    # dlcbench times run() and every result says "region: end_to_end", so your figures are never compared
    # with other backends' resident ones. (The placeholder library computes in numpy: it has no other memory.)
    resident_region = False

    def __init__(self, manifest: Manifest, runner):
        super().__init__(manifest)
        self._runner = runner

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self._runner.run(None, inputs)  # TODO: your library's inference call
        except Exception as err:
            raise BackendRuntimeError(f"mybackend run failed: {one_line(err, 300)}") from None
        return {name: np.asarray(v) for name, v in zip(self.output_names, values)}

    # TODO: the resident region, then set resident_region = True. The conformance suite checks that it
    # exists, is not slower than run(), and returns None without allocating numpy outputs. For example:
    #
    # def prepare(self, inputs):
    #     self._staged = {k: mylib.to_device(v) for k, v in inputs.items()}  # once, outside the timed loop
    #
    # def run_prepared(self):
    #     outputs = self._runner.run_on_device(self._staged)  # outputs stay device buffers: no numpy copy
    #     mylib.synchronize()                                  # wait for completion, return None
    #
    # Optional: native_time() when the library has its own timer.

    def close(self) -> None:
        self._runner = None


class MyBackendAdapter(Adapter):
    """TODO: one line on what the backend is (shown in reports)."""

    name = "mybackend"            # TODO: the name users type; must equal the registry / entry-point name
    source = "onnx"               # "onnx", "onnx-folded" (static shapes, constants folded) or "keras"
    targets = ("cpu",)            # what it can build for: "cpu", "cuda"
    precisions = ("fp32",)        # what it can compute in: "fp32", "fp16", "bf16", "int8"
    Options = MyBackendOptions
    requires = ("onnx",)          # TODO: the top-level modules of your library
    install_hint = "pip install onnx"  # TODO: how to get the library

    # available() imports `requires` by default; override it to check versions or hardware as well,
    # returning Availability(False, "why not", "how to install") instead of raising.

    def version(self) -> str:
        return package_version("onnx")  # TODO: your library's distribution name

    def _compile(self, model, options: MyBackendOptions, out_dir: Path) -> dict[str, Any]:
        from onnx.reference import ReferenceEvaluator  # TODO: your library, imported here

        # model.onnx_path is the ONNX file; model.meta["inputs"] has names, shapes, dtypes;
        # self.input_shapes(model, options) gives the static shapes to build for (batch = options.batch).
        shutil.copyfile(model.onnx_path, out_dir / "model.onnx")  # TODO: build and write your artifact
        try:
            ReferenceEvaluator(str(out_dir / "model.onnx"), check_shape_annotations=options.strict)
        except NotImplementedError as err:  # TODO: turn "operator not supported" into UnsupportedOpError
            text = str(err)
            op = text.split("operator '")[1].split("'")[0] if "operator '" in text else "unknown"
            raise UnsupportedOpError(self.name, op, one_line(text, 200)) from None
        # Every file the artifact needs, by role; target_detail and extra go into the manifest too.
        return {"files": {"model": "model.onnx"}, "target_detail": {"device": "cpu"}, "extra": {}}

    def _load(self, artifact_dir: Path, manifest: Manifest) -> Session:
        from onnx.reference import ReferenceEvaluator

        # Everything needed is in artifact_dir and the manifest (options included: manifest.threads).
        try:
            runner = ReferenceEvaluator(str(artifact_dir / manifest.files["model"]),
                                        check_shape_annotations=bool(manifest.options.get("strict", False)))
        except Exception as err:
            raise BackendRuntimeError(f"mybackend could not load {artifact_dir}: {one_line(err, 300)}") from None
        return MyBackendSession(manifest, runner)
