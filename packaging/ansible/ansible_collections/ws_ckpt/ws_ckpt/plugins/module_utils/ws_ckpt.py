# -*- coding: utf-8 -*-
# Copyright: The ws-ckpt contributors
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Shared code of the ws_ckpt modules: run the ws-ckpt CLI with --format json, find the
daemon, read the effective config, and write TOML values.

What it does: every call goes through the ws-ckpt command line (never the state files);
errors carry ws-ckpt's own message and hint. What it must not do: change anything by itself
(the modules decide), or use the network.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import os
import re
import socket
import tempfile

SOCKET_NAME = "ws-ckpt.sock"
COUNT = re.compile(r"^[0-9]+$")


class WsCkptError(Exception):
    """A ws-ckpt command failed: its error document (code, message, hint) and output."""

    def __init__(self, cmd, rc, error, stdout, stderr):
        self.cmd = cmd
        self.rc = rc
        self.error = error or {}
        self.stdout = stdout
        self.stderr = stderr
        super(WsCkptError, self).__init__(self.describe())

    @property
    def code(self):
        return self.error.get("code")

    def describe(self):
        message = self.error.get("message") or self.stderr.strip() or self.stdout.strip()
        text = "%s failed (exit %s): %s" % (" ".join(self.cmd), self.rc, message)
        if self.error.get("hint"):
            text += "; hint: %s" % self.error["hint"]
        return text


class WsCkpt(object):
    """The ws-ckpt command line for one config file."""

    def __init__(self, module, executable, config):
        self.module = module
        self.config = os.path.abspath(config)
        if os.sep in executable:
            self.executable = executable
        else:
            self.executable = module.get_bin_path(executable, required=True,
                                                  opt_dirs=["/usr/local/bin", "/usr/bin"])

    def run(self, args, config=None, ok_codes=(0,)):
        """Run `ws-ckpt --config CONFIG --format json ARGS`; returns (rc, parsed JSON: an object,
        or the array `list` prints). Raises WsCkptError for an exit code outside ok_codes or output that is not JSON."""
        cmd = [self.executable, "--config", config or self.config, "--format", "json"] + list(args)
        rc, out, err = self.module.run_command(cmd, environ_update={"WS_CKPT_LOG": "error"})
        try:
            data = json.loads(out) if out.strip() else None
        except ValueError:
            data = None
        if rc not in ok_codes or not isinstance(data, (dict, list)):
            error = data.get("error") if isinstance(data, dict) else None
            raise WsCkptError(cmd, rc, error, out, err)
        return rc, data

    def show(self, config=None):
        """The effective config (`config show`)."""
        return self.run(["config", "show"], config=config)[1]

    def validate(self, config):
        """None when `config validate` accepts config, else its error document."""
        try:
            self.run(["config", "validate"], config=config)
        except WsCkptError as e:
            return e.error or {"code": "ConfigInvalid", "message": e.describe()}
        return None

    def daemon_running(self, shown):
        """Whether a daemon answers on the socket of this config."""
        path = os.path.join(shown["daemon"]["runtime_dir"], SOCKET_NAME)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(2)
        try:
            sock.connect(path)
            return True
        except (OSError, socket.error):
            return False
        finally:
            sock.close()

    def status(self):
        """`status` (its exit code says healthy 0 / error 1 / degraded 3; all are reports)."""
        return self.run(["status"], ok_codes=(0, 1, 3))[1]


def normalize_path(path):
    """The path as ws-ckpt records it: absolute, the parent's symlinks resolved, the last
    component kept (it is the workspace symlink)."""
    path = os.path.normpath(os.path.abspath(path))
    parent, base = os.path.split(path)
    if parent and os.path.isdir(parent):
        parent = os.path.realpath(parent)
    return os.path.join(parent, base) if base else parent


def derived_ws_id(path):
    """ws- and the first 6 hex digits of SHA-256 of the path (what `ws-ckpt init` derives)."""
    return "ws-" + hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:6]


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


def toml_value(value):
    """TOML for a bool, an int, a string or a list of strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_string(v) for v in value) + "]"
    return toml_string(value)


def write_atomic(path, text, mode=0o644):
    """Write text to path through a temporary file in the same directory, fsync, rename."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".ws_ckpt-", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, os.stat(path).st_mode & 0o7777 if os.path.exists(path) else mode)
        os.rename(tmp, path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except Exception:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
