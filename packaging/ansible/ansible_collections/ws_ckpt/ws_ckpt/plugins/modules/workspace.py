#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: The ws-ckpt contributors
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Ansible module ws_ckpt.ws_ckpt.workspace: declare one ws-ckpt workspace and converge.

What it does: writes the whole [[workspace]] declaration (path, id, keep, auto_cleanup,
allow_users, allow_groups, state) in one step, validated on a copy of the config first,
then makes ws-ckpt apply it (reload through a running daemon, else apply). A change the
apply rejects, or that does not reach the requested state, is undone in the config.

What it must not do: touch anything but the config files and what ws-ckpt itself does, use
the network, or report changed=true when the config already matches and apply changed nothing.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: workspace
short_description: Declare a ws-ckpt workspace (instant btrfs checkpoints) and converge
version_added: "0.4.0"
description:
  - Declares a directory as a ws-ckpt workspace (it becomes a symlink to a btrfs subvolume
    with instant checkpoints and rollbacks) or releases it back to a plain directory.
  - The whole declaration (O(id), O(keep), O(auto_cleanup), O(allow_users), O(allow_groups))
    is written in one step before ws-ckpt initializes the workspace, so retention and access
    apply from the first moment, never the defaults.
  - The edited configuration is validated with C(ws-ckpt config validate) on a copy before
    anything is written. Then C(ws-ckpt reload) (with a running daemon) or C(ws-ckpt apply)
    converges the machine. When that rejects the configuration, or the workspace does not
    reach the requested state, the configuration file is restored and the task fails with
    ws-ckpt's message and hint.
options:
  path:
    description:
      - Absolute path of the workspace directory. It must exist for O(state=present).
    type: path
    required: true
  state:
    description:
      - V(present) declares and initializes the workspace.
      - V(absent) releases it (data back to a plain directory, snapshots deleted after the copy
        is verified); a workspace recorded but declared nowhere is released too.
    type: str
    choices: [present, absent]
    default: present
  id:
    description:
      - The workspace ID (C([A-Za-z0-9][A-Za-z0-9._-]{0,63})).
      - Default when declaring a new workspace is the one ws-ckpt derives from the path. An existing
        workspace's ID cannot be changed.
    type: str
  keep:
    description:
      - Per-workspace retention, a count (V(50)) or an age (V(30d)). Unset leaves the
        declaration's value (or the C([retention]) default for a new one).
    type: raw
  auto_cleanup:
    description:
      - Per-workspace automatic retention. Unset leaves the declaration's value.
    type: bool
  allow_users:
    description:
      - Users allowed to use the workspace through the daemon besides its owner and root. Unset
        leaves the declaration's value.
    type: list
    elements: str
  allow_groups:
    description:
      - Groups whose members are allowed like O(allow_users). Unset leaves the declaration's value.
    type: list
    elements: str
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
    description: Validates the change and reports the actions C(ws-ckpt apply --check) plans
      for it on a copy of the config (predicted actions when a daemon is running); changes nothing.
    support: full
  diff_mode:
    description: Shows the config file before and after, and the actions.
    support: full
  platform:
    description: Linux hosts with ws-ckpt installed; run as root.
    support: full
    platforms: posix
notes:
  - Run as root (C(become=true)); ws-ckpt initializes workspaces in-process when no daemon runs.
  - In check mode the config file must exist (the C(ws_ckpt.ws_ckpt.ws_ckpt) role installs ws-ckpt
    and writes it, and skips the workspaces in check mode until it exists).
  - A new declaration goes to C(config.d/50-<id>.toml); changes to an existing one are made in the
    file that declares it, keeping its comments.
seealso:
  - module: ws_ckpt.ws_ckpt.workspace_info
  - name: ws-ckpt.toml(5)
    description: Every key of a workspace declaration (C(ws-ckpt man ws-ckpt.toml)).
    link: https://github.com/ws-ckpt/ws-ckpt/blob/main/reconciler/src/config/keys.rs
author:
  - ws-ckpt maintainers (@ws-ckpt)
"""

EXAMPLES = r"""
- name: The agent's project gets instant checkpoints, 50 kept, shared with the agents group
  ws_ckpt.ws_ckpt.workspace:
    path: /srv/agent/project
    keep: 50
    auto_cleanup: true
    allow_groups: [agents]
  register: ws

- name: Show its ID
  ansible.builtin.debug:
    msg: "{{ ws.ws_id }}"

- name: Give the data back as a plain directory
  ws_ckpt.ws_ckpt.workspace:
    path: /srv/agent/old-project
    state: absent
"""

RETURN = r"""
ws_id:
  description: The workspace's ID (for O(state=absent), the ID it had), when known.
  type: str
  returned: when known
  sample: ws-4612d8
path:
  description: The workspace path as ws-ckpt records it.
  type: str
  returned: always
  sample: /srv/agent/project
state:
  description: The requested state.
  type: str
  returned: always
  sample: present
declared_in:
  description: The config file that declares the workspace.
  type: str
  returned: when declared
  sample: /etc/ws-ckpt/config.d/50-ws-4612d8.toml
config_changed:
  description: Whether a config file was (or, in check mode, would be) changed.
  type: bool
  returned: always
  sample: true
actions:
  description: The actions ws-ckpt ran (or would run), as in C(ws-ckpt apply --format json).
  type: list
  elements: dict
  returned: always
  sample:
    - action: init-workspace
      ws_id: ws-4612d8
      path: /srv/agent/project
      result: done
findings:
  description: The findings ws-ckpt reported, each with kind, severity, message and hint.
  type: list
  elements: dict
  returned: always
  sample:
    - kind: advisory-fs-usage
      severity: warning
      message: the btrfs filesystem is 93% full
      hint: delete old snapshots (ws-ckpt cleanup) or grow the image (img_size)
predicted:
  description: True in check mode when a running daemon prevented an exact plan, so RV(actions)
    is predicted from the change.
  type: bool
  returned: always
  sample: false
"""

import os
import re
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.ws_ckpt.ws_ckpt.plugins.module_utils.ws_ckpt import (
    COUNT,
    WsCkpt,
    WsCkptError,
    derived_ws_id,
    normalize_path,
    toml_string,
    toml_value,
    write_atomic,
)

TABLE_HEADER = re.compile(r"^\s*\[")
WORKSPACE_HEADER = re.compile(r"^\s*\[\[\s*workspace\s*\]\]\s*(#.*)?$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
KEY_ORDER = ["id", "keep", "auto_cleanup", "allow_users", "allow_groups", "state"]


def duration_secs(text):
    """Seconds of a ws-ckpt duration ("30d", "1h30m"), or None when it is not one."""
    parts = re.findall(r"([0-9]+)([smhdw])", text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        return None
    return sum(int(n) * UNITS[u] for n, u in parts)


def keep_param(value):
    """keep as ws-ckpt writes it: an int (count) or a string (age); None when unset."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("keep must be a count such as 50 or an age such as 30d, not a boolean")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    return int(text) if COUNT.match(text) else text


def same_keep(current, wanted):
    if isinstance(wanted, int):
        return isinstance(current, int) and not isinstance(current, bool) and current == wanted
    if not isinstance(current, str):
        return False
    a, b = duration_secs(current), duration_secs(wanted)
    return current == wanted or (a is not None and a == b)


def parse_string(text):
    """The value of a one-line TOML string at the start of text, or None."""
    text = text.strip()
    if text.startswith("'"):
        end = text.find("'", 1)
        return text[1:end] if end > 0 else None
    if not text.startswith('"'):
        return None
    out, i = [], 1
    escapes = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}
    while i < len(text):
        ch = text[i]
        if ch == '"':
            return "".join(out)
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt in escapes:
                out.append(escapes[nxt])
                i += 2
                continue
            if nxt in "uU":
                width = 4 if nxt == "u" else 8
                try:
                    out.append(chr(int(text[i + 2:i + 2 + width], 16)))
                except ValueError:
                    return None
                i += 2 + width
                continue
            return None
        out.append(ch)
        i += 1
    return None


def key_line(key):
    return re.compile(r"^\s*" + re.escape(key) + r"\s*=")


def edit_table(text, path, updates):
    """text with the [[workspace]] table declaring path updated ({key: TOML text, or None to
    remove the key}). Raises ValueError when the table is not in a form this editor handles."""
    lines = text.splitlines(True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    path_re = key_line("path")
    i = 0
    while i < len(lines):
        if not WORKSPACE_HEADER.match(lines[i]):
            i += 1
            continue
        start = end = i + 1
        while end < len(lines) and not TABLE_HEADER.match(lines[end]):
            end += 1
        path_at = None
        for j in range(start, end):
            if path_re.match(lines[j]):
                value = parse_string(lines[j].split("=", 1)[1])
                if value is not None and normalize_path(value) == path:
                    path_at = j
        if path_at is None:
            i = end
            continue
        table = lines[start:end]
        for key in KEY_ORDER:
            if key not in updates:
                continue
            rendered = updates[key]
            at = [k for k, line in enumerate(table) if key_line(key).match(line)]
            for k in at:
                value = table[k].split("=", 1)[1].strip()
                if value.startswith("[") and "]" not in value:
                    raise ValueError("%s spans several lines; edit it by hand" % key)
            if rendered is None:
                table = [line for k, line in enumerate(table) if k not in at]
            elif at:
                table[at[0]] = "%s = %s\n" % (key, rendered)
            else:
                table.insert(path_at - start + 1, "%s = %s\n" % (key, rendered))
        lines[start:end] = table
        return "".join(lines)
    raise ValueError("no [[workspace]] table with path = %s" % toml_string(path))


class Workspace(object):
    def __init__(self, module):
        self.module = module
        p = module.params
        self.cli = WsCkpt(module, p["executable"], p["config"])
        self.path = normalize_path(p["path"])
        self.state = p["state"]
        try:
            self.keep = keep_param(p["keep"])
        except ValueError as e:
            module.fail_json(msg=str(e))
        self.result = dict(changed=False, config_changed=False, path=self.path, state=self.state,
                           actions=[], findings=[], predicted=False)
        self.diffs = []

    def fail(self, msg, **extra):
        self.result.update(extra)
        if self.module._diff:
            self.result["diff"] = self.diffs
        self.module.fail_json(msg=msg, **self.result)

    def guard(self, call, *args, **kwargs):
        try:
            return call(*args, **kwargs)
        except WsCkptError as e:
            self.fail(e.describe(), rc=e.rc, error=e.error)

    def entry(self, shown):
        for ws in shown.get("workspaces", []):
            if normalize_path(ws.get("path", "")) == self.path:
                return ws
        return None

    def recorded(self, status):
        for ws in status.get("workspaces", []):
            if ws.get("path") == self.path:
                return ws
        return None

    def wanted(self, entry, recorded):
        """{key: TOML text or None} to change in the declaration (entry may be None)."""
        p = self.module.params
        current = entry or {}
        updates = {}
        if p["id"] is not None:
            if current.get("id") != p["id"]:
                have = recorded.get("ws_id") if recorded else None
                if have and have != p["id"]:
                    self.fail("%s is workspace %s; its id cannot be changed to %s (release it with "
                              "state=absent and declare it again)" % (self.path, have, p["id"]))
                if not (have == p["id"] and entry is not None and current.get("id") is None):
                    updates["id"] = toml_string(p["id"])
        if self.keep is not None and not same_keep(current.get("keep"), self.keep):
            updates["keep"] = toml_value(self.keep)
        if p["auto_cleanup"] is not None and current.get("auto_cleanup") != p["auto_cleanup"]:
            updates["auto_cleanup"] = toml_value(p["auto_cleanup"])
        for key in ("allow_users", "allow_groups"):
            if p[key] is not None and sorted(current.get(key) or []) != sorted(p[key]):
                updates[key] = toml_value(list(p[key]))
        if self.state == "absent":
            if current.get("state") != "absent":
                updates["state"] = toml_string("absent")
        elif entry is not None and current.get("state") == "absent":
            updates["state"] = None
        return updates

    def new_file(self, shown):
        """A drop-in name for a new declaration, like `ws-ckpt init` would choose."""
        base = self.module.params["id"] or derived_ws_id(self.path)
        dropins = shown["dropin_dir"]
        for n in range(1, 100):
            name = "50-%s.toml" % (base if n == 1 else "%s-%d" % (base, n))
            candidate = os.path.join(dropins, name)
            if not os.path.exists(candidate):
                return candidate
        self.fail("no free drop-in name for %s in %s" % (base, dropins))

    def new_text(self, updates):
        lines = ["# Declared by the ws_ckpt.ws_ckpt.workspace Ansible module; edit it with the module",
                 "# or by hand (`ws-ckpt config validate` checks an edit).", "",
                 "[[workspace]]", "path = %s" % toml_string(self.path)]
        for key in KEY_ORDER:
            if updates.get(key) is not None:
                lines.append("%s = %s" % (key, updates[key]))
        return "\n".join(lines) + "\n"

    def copy_config(self, shown, target, text):
        """A temporary copy of the config tree with target's text replaced (or added).
        Returns (temporary directory, path of its main file, {real path: copy path})."""
        tmp = tempfile.mkdtemp(prefix="ws_ckpt-")
        main = os.path.join(tmp, "config.toml")
        dropins = os.path.join(tmp, "config.d")
        os.mkdir(dropins)
        mapping = {}
        if os.path.exists(self.cli.config):
            shutil.copyfile(self.cli.config, main)
            mapping[self.cli.config] = main
        real_dropins = shown["dropin_dir"]
        if os.path.isdir(real_dropins):
            for name in sorted(os.listdir(real_dropins)):
                src = os.path.join(real_dropins, name)
                if name.endswith(".toml") and not name.startswith(".") and os.path.isfile(src):
                    shutil.copyfile(src, os.path.join(dropins, name))
                    mapping[src] = os.path.join(dropins, name)
        if target == self.cli.config:
            dest = main
        elif os.path.dirname(target) == real_dropins:
            dest = os.path.join(dropins, os.path.basename(target))
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            self.fail("%s declares %s but is neither %s nor in %s" % (target, self.path, self.cli.config, real_dropins))
        with open(dest, "w") as handle:
            handle.write(text)
        mapping[target] = dest
        return tmp, main, mapping

    def verify_copy(self, shown, main, mapping, updates):
        """The copy validates and declares exactly what was asked, and nothing else changed."""
        error = self.cli.validate(main)
        if error:
            reverse = dict((v, k) for k, v in mapping.items())
            message = error.get("message", "")
            for copy, real in reverse.items():
                message = message.replace(copy, real)
            self.fail("the edited configuration is invalid, nothing was written: %s%s"
                      % (message, "; hint: %s" % error["hint"] if error.get("hint") else ""), error=error)
        after = self.guard(self.cli.show, main)
        mine = self.entry(after)
        if mine is None:
            self.fail("internal check failed: the edited configuration does not declare %s" % self.path)
        p = self.module.params
        expect = {"state": self.state}
        if p["id"] is not None and "id" in updates:
            expect["id"] = p["id"]
        if p["auto_cleanup"] is not None:
            expect["auto_cleanup"] = p["auto_cleanup"]
        for key in ("allow_users", "allow_groups"):
            if p[key] is not None:
                expect[key] = sorted(p[key])
        for key, value in expect.items():
            have = sorted(mine.get(key) or []) if key.startswith("allow_") else mine.get(key)
            if have != value:
                self.fail("internal check failed: after the edit %s is %r, not %r; nothing was written" % (key, have, value))
        if self.keep is not None and not same_keep(mine.get("keep"), self.keep):
            self.fail("internal check failed: after the edit keep is %r, not %r" % (mine.get("keep"), self.keep))
        strip = ("source", "files", "config_path", "dropin_dir")

        def others(cfg):
            return [dict((k, v) for k, v in w.items() if k not in strip)
                    for w in cfg["workspaces"] if normalize_path(w["path"]) != self.path]

        def settings(cfg):
            return dict((k, v) for k, v in cfg.items() if k not in strip + ("workspaces",))

        if others(after) != others(shown) or settings(after) != settings(shown):
            self.fail("internal check failed: editing %s would change other settings; edit it by hand" % self.path)

    def converge(self, shown, check, config=None):
        """(rc, apply report or error document)."""
        if check:
            return self.cli.run(["apply", "--check"], config=config, ok_codes=(0, 1))
        args = ["reload"] if self.cli.daemon_running(shown) else ["apply"]
        return self.cli.run(args, ok_codes=(0, 1))

    def problems(self, report):
        """ws-ckpt's messages and hints for what failed in an apply report or error document."""
        if "error" in report and isinstance(report["error"], dict):
            e = report["error"]
            return ["%s%s" % (e.get("message"), "; hint: %s" % e["hint"] if e.get("hint") else "")]
        out = []
        for a in report.get("actions", []):
            if a.get("result") == "failed":
                e = a.get("error") or {}
                out.append("%s %s: %s%s" % (a.get("action"), a.get("path") or a.get("ws_id") or "",
                                            e.get("message"), "; hint: %s" % e["hint"] if e.get("hint") else ""))
        for f in report.get("findings", []):
            if f.get("severity") == "error":
                out.append("%s: %s; hint: %s" % (f.get("kind"), f.get("message"), f.get("hint")))
        return out

    def predicted(self, entry, recorded):
        if self.state == "present" and recorded is None:
            return [dict(action="init-workspace", path=self.path, result="planned")]
        if self.state == "absent" and recorded is not None:
            return [dict(action="release-workspace", ws_id=recorded.get("ws_id"), path=self.path, result="planned")]
        return []

    def run(self):
        module = self.module
        if module.check_mode and not os.path.exists(self.cli.config):
            self.fail("%s does not exist: in check mode ws-ckpt would plan against its built-in defaults "
                      "(a loop image under /var/lib/ws-ckpt), not the configuration this host will have. "
                      "Install ws-ckpt and write its config first (the ws_ckpt.ws_ckpt.ws_ckpt role does both), "
                      "or point the config option at the right file." % self.cli.config)
        shown = self.guard(self.cli.show)
        status = self.guard(self.cli.status)
        entry = self.entry(shown)
        recorded = self.recorded(status)
        if self.state == "absent" and entry is None and recorded is None:
            self.finish(status)
        updates = self.wanted(entry, recorded)
        # A new declaration is a change even when it sets nothing but the path.
        changing = bool(updates) or (entry is None and self.state == "present")
        target, before, after = None, None, None
        if changing:
            if entry is None:
                target = self.new_file(shown)
                before, after = "", self.new_text(updates)
            else:
                target = entry.get("source") or self.cli.config
                with open(target) as handle:
                    before = handle.read()
                try:
                    after = edit_table(before, self.path, updates)
                except ValueError as e:
                    self.fail("cannot edit %s: %s" % (target, e))
            self.diffs.append(dict(before=before, after=after, before_header=target, after_header=target))
            self.result["config_changed"] = True
            self.result["changed"] = True

        if self.state == "present" and recorded is None and not os.path.isdir(self.path):
            self.fail("%s is not a directory: create it first (a workspace is made from an existing "
                      "directory, as `ws-ckpt init` requires)" % self.path)
        tmp, main = None, None
        try:
            if changing:
                tmp, main, mapping = self.copy_config(shown, target, after)
                self.verify_copy(shown, main, mapping, updates)
            if module.check_mode:
                if self.cli.daemon_running(shown):
                    self.result["predicted"] = True
                    self.result["actions"] = self.predicted(entry, recorded)
                    module.warn("a ws-ckpt daemon is running and plans only its own configuration; "
                                "the actions are predicted from the change")
                else:
                    rc, report = self.guard(self.converge, shown, True, main)
                    self.take(report)
                    problems = self.problems(report)
                    if rc != 0 and problems:
                        self.fail("ws-ckpt apply --check reports: " + " | ".join(problems))
                if self.result["actions"]:
                    self.result["changed"] = True
                self.finish(status, check=True)
        finally:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)

        if changing:
            self.write(target, after)
        try:
            rc, report = self.converge(shown, False)
        except WsCkptError as e:
            self.restore(target, before, changing)
            self.fail("%s; %s" % (e.describe(), self.restored_note(target, changing)), rc=e.rc, error=e.error)
        if isinstance(report.get("error"), dict):
            # e.g. ConfigInvalid from the daemon's reload: the configuration goes back.
            self.restore(target, before, changing)
            self.fail("%s; %s" % (" | ".join(self.problems(report)), self.restored_note(target, changing)),
                      error=report["error"])
        self.take(report)
        status = self.guard(self.cli.status)
        reached = self.recorded(status)
        ok = (reached is not None) if self.state == "present" else (reached is None)
        problems = self.problems(report)
        if not ok:
            self.restore(target, before, changing)
            self.fail("ws-ckpt did not %s %s: %s; %s" % (
                "initialize" if self.state == "present" else "release", self.path,
                " | ".join(problems) or "no action reported an error (see findings)",
                self.restored_note(target, changing)))
        if report.get("changed"):
            self.result["changed"] = True
        for problem in problems:
            module.warn("ws-ckpt apply: " + problem)
        self.finish(status, recorded=recorded)

    def take(self, report):
        self.result["actions"] = report.get("actions", [])
        self.result["findings"] = report.get("findings", [])
        planned = "\n".join("%s %s %s" % (a.get("result", ""), a.get("action"), a.get("path") or a.get("ws_id") or "")
                            for a in self.result["actions"])
        if planned:
            self.diffs.append(dict(prepared="ws-ckpt %s:\n%s\n" % (
                "apply --check" if self.module.check_mode else "apply", planned)))

    def write(self, target, text):
        directory = os.path.dirname(target)
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o755)
        write_atomic(target, text)

    def restore(self, target, before, changing):
        if not changing:
            return
        if before == "":
            os.unlink(target)
        else:
            write_atomic(target, before)
        self.result["config_changed"] = False
        self.result["changed"] = False

    def restored_note(self, target, changing):
        if not changing:
            return "the configuration was not changed"
        return "%s was restored" % target

    def finish(self, status, check=False, recorded=None):
        mine = self.recorded(status) or recorded or {}
        shown = None
        try:
            shown = self.cli.show()
        except WsCkptError:
            pass
        entry = self.entry(shown) if shown else None
        if mine.get("ws_id"):
            self.result["ws_id"] = mine["ws_id"]
        elif entry and entry.get("id"):
            self.result["ws_id"] = entry["id"]
        if entry:
            self.result["declared_in"] = entry.get("source")
        if self.module._diff:
            self.result["diff"] = self.diffs
        self.module.exit_json(**self.result)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            id=dict(type="str"),
            keep=dict(type="raw"),
            auto_cleanup=dict(type="bool"),
            allow_users=dict(type="list", elements="str"),
            allow_groups=dict(type="list", elements="str"),
            config=dict(type="path", default="/etc/ws-ckpt/config.toml"),
            executable=dict(type="str", default="ws-ckpt"),
        ),
        supports_check_mode=True,
    )
    if not os.path.isabs(module.params["path"]):
        module.fail_json(msg="path must be absolute: %s" % module.params["path"])
    Workspace(module).run()


if __name__ == "__main__":
    main()
