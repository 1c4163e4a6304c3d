"""Third-party adapters that break on purpose, registered for tests through ``$DLCBENCH_BACKENDS``.

Each is an ONNX Runtime adapter with one fault, so everything else about it works.
"""

from __future__ import annotations

from dlcbench.compilers.ort_adapter import OnnxRuntimeAdapter


class InitRaisesAdapter(OnnxRuntimeAdapter):
    """Its constructor raises (a plugin that, say, opens a device handle in ``__init__``)."""

    name = "initraises"

    def __init__(self):
        raise RuntimeError("no device handle from InitRaisesAdapter")


class ProbeRaisesAdapter(OnnxRuntimeAdapter):
    """Its ``available()`` raises instead of returning an Availability."""

    name = "proberaises"

    @classmethod
    def available(cls):
        raise OSError("driver query failed in ProbeRaisesAdapter")


class RunRaisesAdapter(OnnxRuntimeAdapter):
    """Compiles fine; its session raises an unclassified error when run (an unexpected error for dlcbench)."""

    name = "runraises"

    def _load(self, artifact_dir, manifest):
        session = super()._load(artifact_dir, manifest)

        def run(inputs):
            raise ZeroDivisionError("bug in RunRaisesAdapter's session")

        session.run = run
        return session


REGISTRATION = ",".join(
    [f"{cls.name}=dlcbench_broken_plugins:{cls.__name__}" for cls in (InitRaisesAdapter, ProbeRaisesAdapter, RunRaisesAdapter)]
    + ["importraises=dlcbench_plugin_import_raises:Adapter", "nosuchmodule=dlcbench_no_such_module:Adapter"]
)
