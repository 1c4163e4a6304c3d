"""A plugin module that raises while being imported (registered in ``dlcbench_broken_plugins.REGISTRATION``)."""

raise ImportError("libmissing.so.1: cannot open shared object file (dlcbench_plugin_import_raises)")
