# SPDX-License-Identifier: GPL-3.0-or-later
# Reachable only after a job added this directory to the filter loader (see leak.py).
class FilterModule:
    def filters(self):
        return {"leaked_filter": lambda v: "leaked"}
