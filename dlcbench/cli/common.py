"""Argument parsing shared by the command-line tools."""

from __future__ import annotations

import argparse

from dlcbench.config import option_value
from dlcbench.errors import BadInputError


def backend_help(plural: bool = False) -> str:
    """``--backend(s)`` help: the built-in names, and that a plugin's name works too."""
    from dlcbench.compilers.registry import builtin_names

    return (("comma-separated: " if plural else "") + ", ".join(builtin_names())
            + ", or a plugin's name (--list-backends of dlcbench compile: which run here)")


def model_help(plural: bool = False) -> str:
    """``--model(s)`` help: the zoo's names, or a model file."""
    from dlcbench.models.zoo import model_names

    return (("comma-separated zoo names or model paths (relative to the current directory): " if plural else
             "zoo name or .keras/.onnx/SavedModel path: ") + ", ".join(model_names()))


def parse_params(pairs: list[str] | None, flag: str = "--param") -> dict:
    """Parses ``KEY=VALUE`` pairs (values as JSON where they parse, else strings; ``-`` in keys becomes ``_``)."""
    params = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise BadInputError(f"{flag} expects KEY=VALUE, got {pair!r}")
        params[key.replace("-", "_")] = option_value(value)
    return params


def add_timing_arguments(parser: argparse.ArgumentParser) -> None:
    """The timing flags every command that times jobs takes: warm-up, minimums, cap, interval target, region."""
    timing = parser.add_argument_group("timing (per job)")
    timing.add_argument("--warmup", type=int, default=10, help="minimum warm-up runs (default: 10)")
    timing.add_argument("--min-iters", type=int, default=20, help="minimum timed runs (default: 20)")
    timing.add_argument("--min-seconds", type=float, default=1.0, help="minimum timed seconds (default: 1.0)")
    timing.add_argument("--max-seconds", type=float, default=60.0,
                        help="timing cap in seconds, never below --min-iters (default: 60)")
    timing.add_argument("--ci-target", type=float, default=0.01, metavar="FRACTION",
                        help="after the minimums, time until the median's 95%% interval is within +-FRACTION of it "
                             "(default: 0.01, i.e. +-1%%; 0: stop at the minimums); whether it was met is recorded")
    timing.add_argument("--region", default="resident", metavar="REGION",
                        help="what one timed run covers: resident (inputs staged where the backend runs, outputs left "
                             "there: for comparing compilers), end_to_end (numpy in, numpy out: what an application "
                             "sees) or both (timed one after the other; the result's timing is the resident one, "
                             "timing_end_to_end the other); reports never compare figures of different regions "
                             "(default: resident)")


def add_input_arguments(parser: argparse.ArgumentParser, accuracy: bool = True) -> None:
    """The flags that fix a model's inputs: shapes of dynamic dimensions, ranges of integer inputs, real data; and
    ``--accuracy`` (labelled data) unless ``accuracy`` is False."""
    group = parser.add_argument_group("model inputs")
    group.add_argument("--input-shape", action="append", default=[], metavar="NAME=D0,D1,...",
                       help="full shape of an input, batch first, fixing its dynamic dimensions (repeatable); a model "
                            "with dynamic dimensions besides the batch needs it")
    group.add_argument("--input-range", action="append", default=[], metavar="NAME=LOW,HIGH",
                       help="draw an integer input from [LOW, HIGH) (repeatable; default: the model's embedding "
                            "table size where it can be read, else [0, 10)); the range used is recorded")
    if accuracy:
        group.add_argument("--accuracy", action="store_true",
                           help="also measure top-1 accuracy on the held-out split of the model's dataset "
                                "(digits-mlp, digits-cnn) against the Keras model's; a drop beyond the precision's "
                                "budget (fp32 0, fp16/bf16 0.5, int8 1 point) fails as accuracy_drop")
    group.add_argument("--inputs", default=None, metavar="FILE.npz",
                       help="run and check on real data: one array per input (names as the model's), rows along the "
                            "leading dimension; the first batch is timed, up to 16 batches are checked")


def input_config(args: argparse.Namespace) -> dict:
    """The :class:`dlcbench.measure.job.JobConfig` fields of :func:`add_input_arguments`' flags."""
    return {"input_shapes": args.input_shape, "input_ranges": args.input_range, "inputs_file": args.inputs,
            "accuracy": getattr(args, "accuracy", False)}


def batch_of(args: argparse.Namespace) -> int:
    """``--batch``, else the leading dimension of the first ``--input-shape``, else 1."""
    if args.batch is not None:
        return args.batch
    from dlcbench.models.inputs import parse_input_shapes

    shapes = parse_input_shapes(args.input_shape)
    return next(iter(shapes.values()))[0] if shapes else 1


def add_job_timeout_argument(parser: argparse.ArgumentParser, note: str) -> None:
    """``--timeout SECONDS``: kill the job after this long (exit 7); ``note`` ends its help (what it covers)."""
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help=f"kill the job after this long: exit 7 (default: no limit; {note})")


def job_timeout(args: argparse.Namespace) -> float | None:
    """``--timeout`` of :func:`add_job_timeout_argument`, checked: a positive finite number, or None.

    Raises:
        BadInputError: zero, negative, NaN or infinite.
    """
    if args.timeout is not None:
        from dlcbench.config import positive_seconds

        positive_seconds("--timeout", args.timeout)
    return args.timeout


def timing_config(args: argparse.Namespace):
    """The :class:`dlcbench.measure.timing.TimingConfig` of :func:`add_timing_arguments`' flags."""
    from dlcbench.measure.timing import TimingConfig

    return TimingConfig(warmup_iters=args.warmup, min_iters=args.min_iters, min_seconds=args.min_seconds,
                        max_seconds=args.max_seconds, ci_target=args.ci_target)
