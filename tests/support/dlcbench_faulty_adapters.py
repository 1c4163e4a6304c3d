"""Adapters that misbehave on purpose, registered for tests through ``$DLCBENCH_BACKENDS``."""

from __future__ import annotations

import os
import time

from dlcbench.compilers.ort_adapter import OnnxRuntimeAdapter


class AbortAdapter(OnnxRuntimeAdapter):
    """Kills its own process (SIGABRT) while compiling."""

    name = "abort"

    def _compile(self, model, options, out_dir):
        os.abort()


class CrashAdapter(OnnxRuntimeAdapter):
    """Segfaults (reads address 0) while compiling, like a native library crashing."""

    name = "crash"

    def _compile(self, model, options, out_dir):
        import ctypes

        ctypes.string_at(0)


class PrintAdapter(OnnxRuntimeAdapter):
    """Prints to stdout (at Python and file-descriptor level) while compiling, as some libraries' loggers do."""

    name = "print"

    def _compile(self, model, options, out_dir):
        print("[INFO] chatty library on stdout", flush=True)
        os.write(1, b"[INFO] chatty native code on fd 1\n")
        return super()._compile(model, options, out_dir)


class HangAdapter(OnnxRuntimeAdapter):
    """Never finishes compiling."""

    name = "hang"

    def _compile(self, model, options, out_dir):
        time.sleep(3600)


class RaiseAdapter(OnnxRuntimeAdapter):
    """Raises an unclassified exception while compiling."""

    name = "raise"

    def _compile(self, model, options, out_dir):
        raise RuntimeError("boom from RaiseAdapter")


class WrongAdapter(OnnxRuntimeAdapter):
    """Compiles fine but returns outputs off by one."""

    name = "wrong"

    def _load(self, artifact_dir, manifest):
        session = super()._load(artifact_dir, manifest)
        run = session.run
        session.run = lambda inputs: {k: v + 1.0 for k, v in run(inputs).items()}
        return session


class NanAdapter(OnnxRuntimeAdapter):
    """Compiles fine but returns NaN as the first element of every output (registered by NAN_REGISTRATION)."""

    name = "nan"

    def _load(self, artifact_dir, manifest):
        import numpy as np

        session = super()._load(artifact_dir, manifest)
        run = session.run

        def first_nan(inputs):
            outputs = {k: np.array(v) for k, v in run(inputs).items()}
            for value in outputs.values():
                value.flat[0] = np.nan
            return outputs

        session.run = first_nan
        return session


#: Registers :class:`NanAdapter` (kept out of REGISTRATION, whose backend list other tests count on).
NAN_REGISTRATION = "nan=dlcbench_faulty_adapters:NanAdapter"

REGISTRATION = ",".join(
    f"{cls.name}=dlcbench_faulty_adapters:{cls.__name__}"
    for cls in (AbortAdapter, CrashAdapter, HangAdapter, PrintAdapter, RaiseAdapter, WrongAdapter)
)
