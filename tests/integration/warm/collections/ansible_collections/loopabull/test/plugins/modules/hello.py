#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
DOCUMENTATION = r"""
module: hello
short_description: says hello (test module of loopabull's warm runner)
options:
  name: {type: str, required: true}
"""
from ansible.module_utils.basic import AnsibleModule


def main():
    m = AnsibleModule(argument_spec={"name": {"type": "str", "required": True}})
    m.exit_json(changed=False, greeting="hello " + m.params["name"])


if __name__ == "__main__":
    main()
