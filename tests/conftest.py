"""Shared fixtures: one export cache per test session; tests/support on the path of every subprocess."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from dlcbench_test_support import ROOT, WORKDIR_ENV

# Worker processes (experiments, coverage) import the deliberately faulty test adapters from here.
SUPPORT = str(ROOT / "tests" / "support")
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [SUPPORT, os.environ.get("PYTHONPATH")]))


@pytest.fixture(scope="session", autouse=True)
def export_cache(tmp_path_factory) -> Path:
    """A fresh export cache for the session, also seen by CLI subprocesses."""
    cache = tmp_path_factory.mktemp("dlcbench-cache")
    old = os.environ.get("DLCBENCH_CACHE")
    os.environ["DLCBENCH_CACHE"] = str(cache)
    os.environ[WORKDIR_ENV] = str(tmp_path_factory.mktemp("workdir"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    yield cache
    if old is None:
        os.environ.pop("DLCBENCH_CACHE", None)
    else:
        os.environ["DLCBENCH_CACHE"] = old


@pytest.fixture(autouse=True)
def _all_cpus_again():
    """A test that loads TVM in this process pins its thread to one core (:mod:`dlcbench.cpus`); the next test's
    subprocesses must not inherit that."""
    yield
    from dlcbench.cpus import restore_affinity

    restore_affinity()


def _sigint_ignored_or_blocked() -> bool:
    """Whether this process ignores or blocks SIGINT, as the kernel sees it (a native library can change either
    without Python's ``signal.getsignal`` knowing)."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    except OSError:
        return False
    bit = 1 << (signal.SIGINT - 1)
    return any(int(fields.get(name, "0").strip(), 16) & bit for name in ("SigIgn", "SigBlk"))


@pytest.fixture(autouse=True)
def _interruptible_children(request):
    """Every test starts with SIGINT handled by Python, unblocked: an ignored or blocked signal stays so in every
    child, so a test that interrupts a CLI with SIGINT would wait for an exit that never comes. A suite started in
    the background of a non-interactive shell (``pytest ... &``) begins that way (POSIX shells ignore SIGINT in
    such jobs): the SIGINT variants of the interrupt tests hung while their SIGTERM variants passed. The summary
    names the tests that found it so (the first test of each worker, then)."""
    if _sigint_ignored_or_blocked():
        request.node.user_properties.append(("sigint_restored", True))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    yield


@pytest.fixture(scope="session")
def tiny_export():
    """Returns a cached function ``(name, batch=2, **kw) -> ExportedModel`` for tiny zoo models."""
    from dlcbench.models.export import ExportConfig, export_model

    def get(name: str, batch: int = 2, **kwargs):
        return export_model(ExportConfig(name, preset="tiny", batch=batch, **kwargs))

    return get


#: Tests that take seconds to minutes each (TVM compiles and tuning, several TensorFlow exports, JIT backends,
#: bundles, pip installs), measured with ``--durations``; ``pytest -m "not slow"`` is the quick inner loop,
#: and CI and the README run everything.
SLOW_TESTS = {
    "test_keras_applications_built_without_weights", "test_a_job_that_dies_mid_round_is_recorded_and_the_others_finish",
    "test_compare_interleave_stores_rounds_and_reports_their_spread",
    "test_tiny_budget_tunes_then_reuses_then_time_budget_stops", "test_tune_script_prints_the_per_task_table",
    "test_database_of_another_target_is_refused", "test_corrupt_or_unlabelled_database_is_refused",
    "test_small_params_are_constants_so_clip_guards_fold_and_every_task_is_schedulable",
    "test_fast_math_replaces_libm_erf_and_still_matches_the_reference",
    "test_failures_are_categorised_and_the_next_job_still_runs", "test_report_from_a_real_small_experiment",
    "test_killed_run_resumes_without_loss_or_repeat", "test_compare_runs_openvino_torch_and_inductor",
    "test_two_runs_of_one_experiment_at_once_split_its_jobs",
    "test_a_result_finished_while_the_database_is_locked_is_journaled_then_imported",
    "test_tvm_cuda_compile_only_carries_device_code", "test_happy_path_tvm_writes_artifact_and_result",
    "test_list_backends_says_why_unavailable", "test_unsupported_op_names_the_op",
    "test_json_parses_after_tvm_tuning", "test_successful_runs_print_only_dlcbench_lines",
    "test_tensorflow_backend_error_is_one_line",
    "test_crash_timeout_and_wrong_result_do_not_stop_the_run", "test_coverage_script_gives_expected_statuses",
    "test_node_tests_are_generated_from_the_onnx_package",
    "test_example_plugin_is_listed_only_when_installed", "test_example_plugin_compiles_checks_and_times",
    "test_conformance_suite_runs_for_the_plugin_and_the_template_in_one_pytest",
    "test_compile_cuda_embeds_sass_for_the_requested_arch",
    "test_compile_heals_a_truncated_cached_model_and_force_export_rebuilds",
    "test_bad_value_exits_two_with_one_line", "test_broken_plugin_is_unavailable_with_the_same_reason_everywhere",
    "test_a_0_1_adapter_loads_with_a_deprecation_warning_and_the_manifests_threads",
    "test_a_report_directory_is_replaced_and_marked", "test_reports_read_a_read_only_database_without_writing",
    "test_failed_jobs_exit_8_and_retry_failed_reruns_only_them", "test_listing_still_shows_the_other_backends",
    "test_rerun_skips_done_jobs_and_force_repeats", "test_good_values_of_the_same_kinds_still_pass",
    "test_the_suite_catches_a_resident_region_that_runs_end_to_end",
}
#: Conformance tests are slow for the backends with heavy imports or JIT compiles.
SLOW_BACKENDS = ("tvm", "tensorflow", "xla", "inductor", "torch", "openvino", "jax")
SLOW_PARAMETRIZED = {"test_adapter_matches_reference", "test_artifact_reloads_in_fresh_process_with_same_outputs",
                     "test_unsupported_precision_is_a_one_line_cli_error", "test_tiny_zoo_model_exports_valid_onnx_matching_keras",
                     "test_resident_region_leaves_the_outputs_in_the_backend", "test_end_to_end_is_not_faster_than_resident"}


def pytest_collection_modifyitems(config, items):
    """Marks the slow tests, then runs the modules with the most slow tests first (the order within a module is
    kept): the two xdist workers take whole modules in this order, and a heavy module left for last ran alone
    while the other worker idled."""
    slow_in_module: dict[str, int] = {}
    for item in items:
        name = getattr(item, "originalname", item.name)
        params = item.callspec.params.values() if hasattr(item, "callspec") else ()
        heavy_param = any(str(p) in SLOW_BACKENDS or str(p) in ("resnet50", "mobilenetv2") for p in params)
        module = item.nodeid.split("::", 1)[0]
        slow_in_module.setdefault(module, 0)
        if (name in SLOW_TESTS or "tests/stage/" in item.nodeid or "test_tvm_cuda_probe" in item.nodeid
                or (name in SLOW_PARAMETRIZED and heavy_param)):
            item.add_marker(pytest.mark.slow)
            slow_in_module[module] += 1
    items.sort(key=lambda item: -slow_in_module[item.nodeid.split("::", 1)[0]])  # stable: same order within ties


def pytest_terminal_summary(terminalreporter):
    """Names the first tests that found SIGINT ignored or blocked (``_interruptible_children`` restored it)."""
    found = sorted({r.nodeid for reports in terminalreporter.stats.values() for r in reports
                    if ("sigint_restored", True) in getattr(r, "user_properties", ())})
    if found:
        terminalreporter.write_line(f"SIGINT was ignored or blocked when {len(found)} test(s) started (restored), "
                                    f"e.g. {', '.join(found[:3])}")
