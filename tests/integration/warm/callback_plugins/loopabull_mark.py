# SPDX-License-Identifier: GPL-3.0-or-later
# A callback plugin enabled in ansible.cfg: a warm job must load it as a cold one does.
from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: loopabull_mark
type: aggregate
short_description: prints one line when a playbook starts
description: [test plugin of loopabull's warm runner]
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "loopabull_mark"
    CALLBACK_NEEDS_ENABLED = True

    def v2_playbook_on_start(self, playbook):
        self._display.display("MARK playbook %s" % playbook._file_name.rsplit("/", 1)[-1])
