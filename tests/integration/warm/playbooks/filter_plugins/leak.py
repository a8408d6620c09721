# SPDX-License-Identifier: GPL-3.0-or-later
# Test filters of loopabull's warm runner: one job changes the state of its Python process
# (environment, a module attribute, the filter loader's search path); the next job reports
# what it sees of that state. Each warm job is a fresh fork of the runner: it must see nothing.
import os
import sys

EXTRA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "extra_filters")


def leak(_):
    from ansible.plugins.loader import filter_loader
    os.environ["LOOPABULL_LEAK"] = "leaked"
    sys.loopabull_leak = True
    filter_loader.add_directory(EXTRA)
    return _


def leak_report(_):
    from ansible.plugins.loader import filter_loader
    return {
        "env": os.environ.get("LOOPABULL_LEAK"),
        "module_attribute": hasattr(sys, "loopabull_leak"),
        "plugin_path": any(EXTRA in str(p) for p in filter_loader._get_paths()),
    }


class FilterModule:
    def filters(self):
        return {"leak": leak, "leak_report": leak_report}
