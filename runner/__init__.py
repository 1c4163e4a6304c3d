"""The common runner: output checks, fair timing, isolation, results store and reports."""
