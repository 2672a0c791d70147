#!/usr/bin/python
# -*- coding: utf-8 -*-
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Ansible module ws_ckpt: declare ws-ckpt workspaces and converge the machine.

What it does: makes the ws-ckpt config declare (state=present) or release (state=absent) one
workspace, optionally with per-workspace retention (keep, auto_cleanup), then runs
`ws-ckpt apply`. New declarations go through `ws-ckpt init`, releases through
`ws-ckpt release` (the CLI's own guards apply); retention changes and re-declarations edit the
[[workspace]] table in the file that declares the path (reported by `ws-ckpt config show`).
Check mode runs `ws-ckpt apply --check` against a temporary copy of the config with the change
made, so the planned actions are exact; diff mode shows the config edit and those actions.

What it must not do: touch anything but the config files and what `ws-ckpt` itself does, use
the network, or report changed=true when the config already matches and apply changed nothing.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: ws_ckpt
short_description: Declare ws-ckpt workspaces (btrfs checkpoints) and run ws-ckpt apply
description:
  - Declares a directory as a ws-ckpt workspace (it becomes a symlink to a btrfs subvolume with
    instant checkpoints) or releases it back to a plain directory, then runs C(ws-ckpt apply).
  - Supports check mode (C(ws-ckpt apply --check) on a temporary copy of the config) and diff
    mode (the config edit plus the planned actions).
options:
  path:
    description: Absolute path of the workspace directory.
    type: path
    required: true
  state:
    description: C(present) declares and initializes the workspace; C(absent) releases it
      (data back to a plain directory, snapshots deleted after verification).
    type: str
    choices: [present, absent]
    default: present
  config:
    description: The ws-ckpt main config file; drop-ins live in its directory's C(config.d).
    type: path
    default: /etc/ws-ckpt/config.toml
  keep:
    description: Per-workspace retention, a count (C(50)) or an age (C(30d)). Unset leaves the
      declaration as it is.
    type: str
  auto_cleanup:
    description: Per-workspace automatic retention. Unset leaves the declaration as it is.
    type: bool
  binary:
    description: The ws-ckpt executable (name looked up in PATH, or a path).
    type: str
    default: ws-ckpt
author: ws-ckpt maintainers
"""

EXAMPLES = r"""
- name: Agent project directory gets instant checkpoints
  ws_ckpt:
    path: /srv/agent/project
    keep: "50"
    auto_cleanup: true

- name: Give the data back as a plain directory
  ws_ckpt:
    path: /srv/agent/old
    state: absent
"""

RETURN = r"""
actions:
  description: The actions C(ws-ckpt apply) ran (or would run, in check mode), as in its JSON.
  type: list
  returned: always
findings:
  description: The findings C(ws-ckpt apply) reported.
  type: list
  returned: always
declared_in:
  description: The config file declaring the workspace, when known.
  type: str
  returned: when known
config_changed:
  description: Whether a config file was (or would be) changed.
  type: bool
  returned: always
workspace:
  description: The normalized workspace path.
  type: str
  returned: always
desired_state:
  description: The requested state.
  type: str
  returned: always
"""

import json
import os
import re
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule

TABLE_HEADER = re.compile(r"^\s*\[")
WORKSPACE_HEADER = re.compile(r"^\s*\[\[\s*workspace\s*\]\]\s*(#.*)?$")


def toml_string(value):
    """A TOML basic string holding value."""
    out = ['"']
    for ch in value:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append("\\u%04X" % ord(ch))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def parse_basic_string(text):
    """The value of a one-line TOML string (basic or literal) at the start of text, or None."""
    text = text.strip()
    if text.startswith("'"):
        end = text.find("'", 1)
        return text[1:end] if end > 0 else None
    if not text.startswith('"'):
        return None
    out = []
    i = 1
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


def set_workspace_keys(text, path, updates):
    """Return text with the [[workspace]] table declaring path given updates ({key: rendered
    TOML value}); None when no such table is found in a form this editor understands."""
    lines = text.splitlines(True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    path_re = key_line("path")
    i = 0
    while i < len(lines):
        if not WORKSPACE_HEADER.match(lines[i]):
            i += 1
            continue
        start = i + 1
        end = start
        while end < len(lines) and not TABLE_HEADER.match(lines[end]):
            end += 1
        path_idx = None
        for j in range(start, end):
            if path_re.match(lines[j]):
                value = parse_basic_string(lines[j].split("=", 1)[1])
                if value is not None and os.path.normpath(value) == path:
                    path_idx = j
        if path_idx is None:
            i = end
            continue
        table = lines[start:end]
        for key, rendered in updates.items():
            new_line = "%s = %s\n" % (key, rendered)
            for k, line in enumerate(table):
                if key_line(key).match(line):
                    table[k] = new_line
                    break
            else:
                insert_at = path_idx - start + 1
                table.insert(insert_at, new_line)
        lines[start:end] = table
        return "".join(lines)
    return None


def write_atomic(path, text):
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".ws_ckpt-", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if os.path.exists(path):
            shutil.copymode(path, tmp)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except Exception:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def render_keep(keep):
    return keep if re.match(r"^[0-9]+$", keep) else toml_string(keep)


def keep_matches(current, wanted):
    if re.match(r"^[0-9]+$", wanted):
        return current == int(wanted) and not isinstance(current, bool)
    return current == wanted


def describe_action(action):
    name = action.get("action", "?")
    target = action.get("path") or action.get("ws_id") or action.get("mount") or ""
    extra = ""
    if name == "apply-retention":
        extra = " " + ", ".join(
            "%s (%s)" % (d.get("id"), d.get("reason")) for d in action.get("delete", [])
        )
    result = action.get("result")
    suffix = " [%s]" % result if result and result not in ("planned", "done") else ""
    return "%s %s %s%s%s" % ("+", name, target, extra, suffix)


class WsCkpt(object):
    def __init__(self, module):
        self.module = module
        p = module.params
        self.path = os.path.normpath(os.path.abspath(p["path"]))
        self.config = os.path.abspath(p["config"])
        binary = p["binary"]
        if os.sep in binary:
            self.binary = binary
        else:
            self.binary = module.get_bin_path(binary, required=True, opt_dirs=["/usr/local/bin"])

    def run(self, args, config=None, allow_fail=False):
        cmd = [self.binary, "--config", config or self.config, "--format", "json"] + args
        rc, out, err = self.module.run_command(cmd)
        try:
            data = json.loads(out) if out.strip() else {}
        except ValueError:
            data = None
        if data is None or (rc != 0 and not allow_fail):
            message = err.strip() or out.strip()
            if isinstance(data, dict) and isinstance(data.get("error"), dict):
                e = data["error"]
                message = "%s (%s)" % (e.get("message"), e.get("hint"))
            self.module.fail_json(
                msg="%s failed (exit %s): %s" % (" ".join(cmd), rc, message),
                rc=rc, stdout=out, stderr=err, cmd=cmd,
            )
        return rc, data

    def declaration(self, config=None):
        _, shown = self.run(["config", "show"], config=config)
        for ws in shown.get("workspaces", []):
            if os.path.normpath(ws.get("path", "")) == self.path:
                return shown, ws
        return shown, None

    def wanted_updates(self, entry):
        """{key: rendered value} that the declaration entry lacks."""
        p = self.module.params
        updates = {}
        if p["state"] == "present" and entry.get("state") == "absent":
            updates["state"] = '"present"'
        if p["keep"] is not None and not keep_matches(entry.get("keep"), p["keep"]):
            updates["keep"] = render_keep(p["keep"])
        if p["auto_cleanup"] is not None and entry.get("auto_cleanup") != p["auto_cleanup"]:
            updates["auto_cleanup"] = "true" if p["auto_cleanup"] else "false"
        return updates

    def new_table(self):
        p = self.module.params
        lines = ["# Declared by the ws_ckpt Ansible module (check mode preview).", "",
                 "[[workspace]]", "path = %s" % toml_string(self.path)]
        if p["keep"] is not None:
            lines.append("keep = %s" % render_keep(p["keep"]))
        if p["auto_cleanup"] is not None:
            lines.append("auto_cleanup = %s" % ("true" if p["auto_cleanup"] else "false"))
        return "\n".join(lines) + "\n"

    def edit_file(self, source, updates, dry_run):
        """Apply updates to the table declaring the path in source; returns (before, after)."""
        with open(source) as handle:
            before = handle.read()
        after = set_workspace_keys(before, self.path, updates)
        if after is None:
            self.module.fail_json(
                msg="cannot find a [[workspace]] table with path = %s in %s; set %s there by hand"
                % (toml_string(self.path), source, ", ".join(sorted(updates)))
            )
        if not dry_run:
            write_atomic(source, after)
        return before, after

    def preview(self, shown, entry, updates):
        """Copy the config to a temporary directory, make the change there, and run
        `apply --check` on the copy. Returns (apply result, file diffs)."""
        tmp = tempfile.mkdtemp(prefix="ws_ckpt-check-")
        try:
            dropins = shown.get("dropin_dir") or os.path.join(os.path.dirname(self.config), "config.d")
            tmp_config = os.path.join(tmp, "config.toml")
            tmp_dropins = os.path.join(tmp, "config.d")
            os.mkdir(tmp_dropins)
            mapping = {}
            if os.path.exists(self.config):
                shutil.copy2(self.config, tmp_config)
                mapping[self.config] = tmp_config
            else:
                open(tmp_config, "w").close()
            if os.path.isdir(dropins):
                for name in os.listdir(dropins):
                    src = os.path.join(dropins, name)
                    if name.endswith(".toml") and os.path.isfile(src):
                        dst = os.path.join(tmp_dropins, name)
                        shutil.copy2(src, dst)
                        mapping[src] = dst
            diffs = []
            state = self.module.params["state"]
            if entry is None and state == "present":
                table = self.new_table()
                with open(os.path.join(tmp_dropins, "99-ws-ckpt-ansible-preview.toml"), "w") as handle:
                    handle.write(table)
                diffs.append({"before_header": "%s (new drop-in written by ws-ckpt init)" % dropins,
                              "after_header": os.path.join(dropins, "50-<ws_id>.toml"),
                              "before": "", "after": table})
            elif entry is not None and updates:
                source = entry.get("source") or self.config
                if source not in mapping:
                    self.module.fail_json(msg="%s declares %s but is not in %s or %s"
                                          % (source, self.path, self.config, dropins))
                before, after = self.edit_file(mapping[source], updates, dry_run=False)
                diffs.append({"before_header": source, "after_header": source,
                              "before": before, "after": after})
            rc, result = self.run(["apply", "--check"], config=tmp_config, allow_fail=True)
            return rc, result, diffs
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            config=dict(type="path", default="/etc/ws-ckpt/config.toml"),
            keep=dict(type="str"),
            auto_cleanup=dict(type="bool"),
            binary=dict(type="str", default="ws-ckpt"),
        ),
        supports_check_mode=True,
    )
    if not os.path.isabs(module.params["path"]):
        module.fail_json(msg="path must be absolute: %s" % module.params["path"])
    ws = WsCkpt(module)
    state = module.params["state"]
    shown, entry = ws.declaration()

    updates = {}
    if entry is not None:
        updates = ws.wanted_updates(entry)
        if state == "absent" and entry.get("state") != "absent":
            updates["state"] = '"absent"'
    config_change = (entry is None and state == "present") or bool(updates)
    declared_in = entry.get("source") if entry else None

    if module.check_mode:
        rc, result, diffs = ws.preview(shown, entry, updates)
        changed = config_change or bool(result.get("changed"))
    else:
        diffs = []
        earlier = []
        if entry is None and state == "present":
            rc, init = ws.run(["init", ws.path], allow_fail=True)
            if rc != 0:
                e = init.get("error", {}) if isinstance(init, dict) else {}
                module.fail_json(msg="ws-ckpt init %s failed: %s (%s)" % (ws.path, e.get("message"), e.get("hint")),
                                 result=init)
            declared_in = init.get("declared_in")
            earlier = (init.get("apply") or {}).get("actions", [])
            diffs.append({"before_header": declared_in, "after_header": declared_in, "before": "",
                          "after": open(declared_in).read() if declared_in and os.path.exists(declared_in) else ""})
            _, entry = ws.declaration()
            if entry is None:
                module.fail_json(msg="ws-ckpt init %s succeeded but config show does not list it" % ws.path)
            updates = ws.wanted_updates(entry)
        elif state == "absent" and entry is not None and entry.get("state") != "absent":
            source = entry.get("source") or ws.config
            with open(source) as handle:
                before = handle.read()
            rc, released = ws.run(["release", ws.path], allow_fail=True)
            if rc != 0:
                e = released.get("error", {}) if isinstance(released, dict) else {}
                module.fail_json(msg="ws-ckpt release %s failed: %s (%s)" % (ws.path, e.get("message"), e.get("hint")),
                                 result=released)
            with open(source) as handle:
                diffs.append({"before_header": source, "after_header": source,
                              "before": before, "after": handle.read()})
            earlier = (released.get("apply") or {}).get("actions", [])
            updates = {}
        if updates:
            source = entry.get("source") or ws.config
            before, after = ws.edit_file(source, updates, dry_run=False)
            diffs.append({"before_header": source, "after_header": source,
                          "before": before, "after": after})
        rc, result = ws.run(["apply"], allow_fail=True)
        changed = config_change or bool(result.get("changed"))
        result["actions"] = earlier + result.get("actions", [])

    actions = result.get("actions", []) if isinstance(result, dict) else []
    findings = result.get("findings", []) if isinstance(result, dict) else []
    planned = "\n".join(describe_action(a) for a in actions)
    if planned:
        diffs.append({"prepared": "ws-ckpt apply%s:\n%s\n" % (" --check" if module.check_mode else "", planned)})
    out = dict(
        changed=changed,
        actions=actions,
        findings=findings,
        config_changed=config_change,
        workspace=ws.path,
        desired_state=state,
    )
    if declared_in:
        out["declared_in"] = declared_in
    if module._diff:
        out["diff"] = diffs
    if rc != 0:
        errors = [f.get("message") for f in findings if f.get("severity") == "error"]
        errors += ["%s: %s" % (a.get("action"), (a.get("error") or {}).get("message"))
                   for a in actions if a.get("result") == "failed"]
        out["msg"] = "ws-ckpt apply%s did not converge: %s" % (
            " --check" if module.check_mode else "", "; ".join(str(e) for e in errors) or "exit %s" % rc)
        module.fail_json(**out)
    module.exit_json(**out)


if __name__ == "__main__":
    main()
