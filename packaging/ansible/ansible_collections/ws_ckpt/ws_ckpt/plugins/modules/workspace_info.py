#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: The ws-ckpt contributors
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Ansible module ws_ckpt.ws_ckpt.workspace_info: ws-ckpt status and snapshot lists.

What it does: runs `ws-ckpt status` and `ws-ckpt list` (--format json) and returns them.
What it must not do: change anything.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: workspace_info
short_description: Report ws-ckpt health, workspaces and their snapshots
version_added: "0.4.0"
description:
  - Returns what C(ws-ckpt status) and C(ws-ckpt list) report, for every workspace or for one.
  - Changes nothing.
options:
  path:
    description:
      - Only this workspace (its path or its ID). Unset reports every workspace.
    type: str
  snapshots:
    description:
      - Also list each workspace's snapshots (C(ws-ckpt list)).
    type: bool
    default: true
  config:
    description:
      - The ws-ckpt main config file; drop-ins live in C(config.d) next to it.
    type: path
    default: /etc/ws-ckpt/config.toml
  executable:
    description:
      - The ws-ckpt executable, a name looked up in E(PATH) or a path.
    type: str
    default: ws-ckpt
attributes:
  check_mode:
    description: Runs in check mode as in a normal run; it changes nothing either way.
    support: full
  diff_mode:
    description: Returns no diff.
    support: N/A
  platform:
    description: Linux hosts with ws-ckpt installed.
    support: full
    platforms: posix
notes:
  - Without a running daemon only root can read the status; other users see their own workspaces
    through the daemon.
seealso:
  - module: ws_ckpt.ws_ckpt.workspace
  - name: ws-ckpt JSON output
    description: The fields of C(ws-ckpt status) and C(ws-ckpt list), with JSON Schemas.
    link: https://github.com/ws-ckpt/ws-ckpt/blob/main/docs/json.md
author:
  - ws-ckpt maintainers (@ws-ckpt)
"""

EXAMPLES = r"""
- name: Health of ws-ckpt on this host
  ws_ckpt.ws_ckpt.workspace_info:
    snapshots: false
  register: ws_ckpt

- name: Fail unless healthy
  ansible.builtin.assert:
    that: ws_ckpt.health == "healthy"
    fail_msg: "{{ ws_ckpt.status.findings | map(attribute='message') | list }}"

- name: The snapshots of one workspace
  ws_ckpt.ws_ckpt.workspace_info:
    path: /srv/agent/project
  register: project

- name: Its newest snapshot
  ansible.builtin.debug:
    msg: "{{ (project.workspaces[0].snapshots | last).id }}"
  when: project.workspaces and project.workspaces[0].snapshots
"""

RETURN = r"""
health:
  description: V(healthy), V(degraded) or V(error), as C(ws-ckpt status) reports it.
  type: str
  returned: always
  sample: healthy
status:
  description: The whole C(ws-ckpt status --format json) document (backend, daemon, workspaces, findings).
  type: dict
  returned: always
  sample:
    health: healthy
    daemon:
      running: true
      pid: 1234
    workspaces:
      - ws_id: ws-4612d8
        path: /srv/agent/project
        condition: ready
        snapshots: 3
        missing: 0
        pinned: 1
        declared: true
    findings: []
    pending_actions: 0
workspaces:
  description: The workspaces (only O(path)'s when given) with their snapshots, oldest first,
    read from C(ws-ckpt list --format json); without O(snapshots), the status entries.
  type: list
  elements: dict
  returned: always
  sample:
    - ws_id: ws-4612d8
      path: /srv/agent/project
      snapshots:
        - id: 20261124-150742-123
          created_at: "2026-11-24T15:07:42.123456789Z"
          message: before refactor
          metadata: null
          pinned: false
          missing: false
exists:
  description: Whether O(path) is a workspace (always true without O(path) when any exists).
  type: bool
  returned: always
  sample: true
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.ws_ckpt.ws_ckpt.plugins.module_utils.ws_ckpt import (
    WsCkpt,
    WsCkptError,
    normalize_path,
)


def with_snapshots(entries, items):
    """The status entries as {ws_id, path, snapshots}, each with its snapshots from the items of
    `ws-ckpt list --format json` (upstream's array of {id, ws_id, meta: {...}}), oldest first."""
    by_ws = {}
    for item in items:
        meta = item.get("meta", {})
        by_ws.setdefault(item.get("ws_id"), []).append(dict(
            id=item.get("id"),
            created_at=meta.get("created_at"),
            message=meta.get("message"),
            metadata=meta.get("metadata"),
            pinned=meta.get("pinned"),
            missing=meta.get("missing"),
        ))
    return [dict(ws_id=w.get("ws_id"), path=w.get("path"), snapshots=by_ws.get(w.get("ws_id"), []))
            for w in entries]


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="str"),
            snapshots=dict(type="bool", default=True),
            config=dict(type="path", default="/etc/ws-ckpt/config.toml"),
            executable=dict(type="str", default="ws-ckpt"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    cli = WsCkpt(module, p["executable"], p["config"])
    wanted = p["path"]
    if wanted and os.sep in wanted:
        wanted = normalize_path(wanted)
    try:
        status = cli.status()
        entries = [w for w in status.get("workspaces", [])
                   if not wanted or wanted in (w.get("path"), w.get("ws_id"))]
        workspaces = entries
        if p["snapshots"]:
            args = ["list"] + (["-w", entries[0]["ws_id"]] if wanted and entries else [])
            if wanted and not entries:
                workspaces = []
            else:
                workspaces = with_snapshots(entries, cli.run(args)[1])
    except WsCkptError as e:
        module.fail_json(msg=e.describe(), rc=e.rc, error=e.error)
    module.exit_json(changed=False, health=status.get("health"), status=status,
                     workspaces=workspaces, exists=bool(entries))


if __name__ == "__main__":
    main()
