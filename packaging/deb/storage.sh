# ws-ckpt uninstall storage rule, shared by the RPM scriptlets (pasted in by the spec) and the
# Debian prerm/postrm (pasted in by packaging/deb/build-deb).
#
# What it does: on a full uninstall (RPM erase, Debian purge) it removes the btrfs-loop image,
# state.json, the lock and the audit log, but ONLY when state.json exists, parses as a ws-ckpt
# state file and records no workspace at all (every workspace was released with
# `ws-ckpt release`). Otherwise it leaves every file where it is. In every case it prints what
# it removed, what it kept and why.
#
# Where things are: the package manager deletes /etc/ws-ckpt/config.toml before the last
# scriptlet runs, so ws_ckpt_remember_paths (called while the package is still installed: RPM
# preun scriptlet, Debian prerm) asks `ws-ckpt config show` for the effective state_dir, image and mount
# (main file and drop-ins merged by ws-ckpt itself) and writes them to
# /var/lib/ws-ckpt/paths-at-removal. ws_ckpt_remove_storage reads that file; without it, the
# config files still present (config.toml.rpmsave, config.toml, config.d/*.toml, in ws-ckpt's
# order), then the defaults. The image and mount recorded in state.json win over both.
#
# What it must not do: delete anything it cannot prove is empty (a corrupt, missing or unknown
# state file means "keep"), follow a guess, touch a btrfs-base filesystem or the config.d
# drop-ins, or fail the package removal (every error is reported and swallowed). It must not
# contain a percent sign: rpmbuild would expand it as a macro.
#
# WS_CKPT_ROOT=<dir> prefixes every path (config, state, image, mount): the Debian scripts set
# it from DPKG_ROOT (dpkg --root ... --force-script-chrootless), the tests set it for the RPM
# scriptlets; the scriptlets skip systemctl when it is set.

ws_ckpt_say() {
    echo "ws-ckpt: $*" >&2
}

ws_ckpt_memory() {
    echo "$WS_CKPT_ROOT/var/lib/ws-ckpt/paths-at-removal"
}

# The string value of KEY in [SECTION] of the TOML on stdin (last one wins), or nothing.
# Handles `key = "value"` and `key = 'value'` lines; other forms yield nothing (the caller
# then falls back to the next source).
ws_ckpt_toml_value() {
    awk -v sec="$1" -v key="$2" '
        /^[[:space:]]*\[/ {
            cur = $0
            sub(/^[[:space:]]*\[+[[:space:]]*/, "", cur)
            sub(/[[:space:]]*\]+.*$/, "", cur)
            gsub(/"/, "", cur)
            next
        }
        cur == sec {
            line = $0
            sub(/^[[:space:]]+/, "", line)
            if (index(line, key) != 1) next
            rest = substr(line, length(key) + 1)
            if (rest !~ /^[[:space:]]*=/) next
            sub(/^[[:space:]]*=[[:space:]]*/, "", rest)
            q = substr(rest, 1, 1)
            if (q != "\"" && q != "\047") next
            rest = substr(rest, 2)
            end = index(rest, q)
            if (end == 0) next
            v = substr(rest, 1, end - 1)
            if (q == "\"") { gsub(/\\\\/, "\\", v) }
            val = v
        }
        END { if (val != "") print val }'
}

# Last value of [SECTION] KEY across the config files still on disk, in ws-ckpt's order.
ws_ckpt_conf_value() {
    _val=""
    for _f in "$WS_CKPT_ROOT/etc/ws-ckpt/config.toml.rpmsave" \
        "$WS_CKPT_ROOT/etc/ws-ckpt/config.toml" \
        "$WS_CKPT_ROOT"/etc/ws-ckpt/config.d/*.toml; do
        [ -f "$_f" ] || continue
        _v=$(ws_ckpt_toml_value "$1" "$2" <"$_f")
        [ -n "$_v" ] && _val="$_v"
    done
    echo "$_val"
}

# NAME=value from the paths remembered at removal, or nothing.
ws_ckpt_remembered() {
    _m=$(ws_ckpt_memory)
    [ -f "$_m" ] || return 0
    sed -n "s/^$1=//p" "$_m" | tail -n 1
}

# While the package is still installed: record the effective paths for the purge.
ws_ckpt_remember_paths() {
    _bin="$WS_CKPT_ROOT/usr/bin/ws-ckpt"
    _conf="$WS_CKPT_ROOT/etc/ws-ckpt/config.toml"
    _m=$(ws_ckpt_memory)
    [ -x "$_bin" ] || return 0
    if ! _shown=$(WS_CKPT_LOG=error "$_bin" --config "$_conf" config show 2>/dev/null); then
        ws_ckpt_say "'ws-ckpt config show' failed (is $_conf valid?); a purge will read the paths from the config files that remain."
        return 0
    fi
    _sd=$(echo "$_shown" | ws_ckpt_toml_value daemon state_dir)
    _img=$(echo "$_shown" | ws_ckpt_toml_value backend.btrfs-loop image)
    _mnt=$(echo "$_shown" | ws_ckpt_toml_value backend.btrfs-loop mount)
    mkdir -p "$(dirname "$_m")" || return 0
    {
        echo "# Written by the ws-ckpt package on removal: the effective paths of the config, for purge."
        echo "state_dir=$_sd"
        echo "image=$_img"
        echo "mount=$_mnt"
    } >"$_m.tmp" && mv "$_m.tmp" "$_m"
}

# The path for NAME (state_dir, image, mount): remembered, else config files, else default.
# Sets _path and _from.
ws_ckpt_path_of() {
    _path=$(ws_ckpt_remembered "$1")
    _from="the config at removal"
    if [ -z "$_path" ]; then
        _path=$(ws_ckpt_conf_value "$2" "$1")
        _from="the config files"
    fi
    if [ -z "$_path" ]; then
        _path="$3"
        _from="the default"
    fi
}

# The string value of `"key": "value"` in a JSON file (first occurrence), or nothing.
ws_ckpt_json_value() {
    tr -d '\n\r\t' <"$2" | sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\"\\([^\"]*\\)\".*/\\1/p" | head -n 1
}

# True (0) only when the state file is a ws-ckpt state file recording no workspace.
ws_ckpt_state_is_empty() {
    _flat=$(tr -d ' \n\r\t' <"$1") || return 1
    case "$_flat" in
    *'"version":'*) ;;
    *) return 1 ;;
    esac
    case "$_flat" in
    *'"ws_id"'* | *'"workspace_path"'*) return 1 ;;
    *'"workspaces":[]'*) return 0 ;;
    esac
    return 1
}

# Paths of the workspaces a state file records, one per line.
ws_ckpt_state_workspaces() {
    tr -d '\n\r\t' <"$1" | sed 's/"workspace_path"/\n&/g' |
        sed -n 's/^"workspace_path"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p'
}

ws_ckpt_is_mounted() {
    [ -r /proc/self/mountinfo ] || return 1
    awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo
}

# The drop-ins are the administrator's declarations (ws-ckpt init writes them): never removed.
ws_ckpt_report_dropins() {
    for _f in "$WS_CKPT_ROOT"/etc/ws-ckpt/config.d/*.toml; do
        [ -f "$_f" ] || continue
        ws_ckpt_say "kept $_f: config.d drop-ins declare your workspaces (ws-ckpt init writes them); delete them yourself when you no longer need them."
    done
}

# An image no state file vouches for: keep it and say so (sets _kept).
ws_ckpt_keep_unvouched() {
    [ -e "$1" ] || return 0
    _kept=1
    ws_ckpt_say "kept $1: there is no $_state saying which workspaces it holds (state_dir from $_state_from, image from $_image_from)."
    ws_ckpt_say "inspect it (losetup -f --show $1; mount it) and delete it yourself when it holds nothing you need."
}

# The rule itself, without the reporting of drop-ins and the cleanup of the memory file.
ws_ckpt_storage_rule() {
    ws_ckpt_path_of state_dir daemon /var/lib/ws-ckpt
    _state_dir="$WS_CKPT_ROOT$_path"
    _state_from="$_from"
    _state="$_state_dir/state.json"
    ws_ckpt_path_of image backend.btrfs-loop "$_path/btrfs-data.img"
    _conf_image="$_path"
    _image_from="$_from"
    ws_ckpt_path_of mount backend.btrfs-loop /mnt/btrfs-workspace
    _conf_mount="$_path"

    if [ ! -e "$_state" ]; then
        _kept=""
        ws_ckpt_keep_unvouched "$WS_CKPT_ROOT$_conf_image"
        [ "$_state_dir/btrfs-data.img" = "$WS_CKPT_ROOT$_conf_image" ] ||
            ws_ckpt_keep_unvouched "$_state_dir/btrfs-data.img"
        [ -n "$_kept" ] || ws_ckpt_say "no ws-ckpt state in $_state_dir (state_dir from $_state_from) and no loop image: nothing to remove."
        rmdir "$_state_dir" 2>/dev/null || true
        return 0
    fi

    if ! ws_ckpt_state_is_empty "$_state"; then
        ws_ckpt_say "kept the snapshot storage: $_state (state_dir from $_state_from) still records these workspaces:"
        _listed=$(ws_ckpt_state_workspaces "$_state")
        if [ -n "$_listed" ]; then
            echo "$_listed" | while IFS= read -r _ws; do ws_ckpt_say "    $_ws"; done
        else
            ws_ckpt_say "    (the file could not be read as a ws-ckpt state file)"
        fi
        ws_ckpt_say "kept $_state_dir (state, indexes), the loop image and the mounted filesystem untouched."
        ws_ckpt_say "to get the data back as plain directories: reinstall ws-ckpt and run 'ws-ckpt release PATH' for each, then remove the package again."
        return 0
    fi

    for _c in "$_state_dir"/state.json.corrupt-*; do
        if [ -e "$_c" ]; then
            ws_ckpt_say "kept $_state_dir: $_c is a state file ws-ckpt set aside as unreadable; it may record workspaces."
            return 0
        fi
    done

    _lock="$_state_dir/daemon.lock"
    if [ -e "$_lock" ] && command -v flock >/dev/null 2>&1 && ! flock -n "$_lock" true 2>/dev/null; then
        ws_ckpt_say "kept $_state_dir: a ws-ckpt daemon still holds $_lock; stop it and remove $_state_dir yourself."
        return 0
    fi

    _backend=$(ws_ckpt_json_value backend_type "$_state")
    _image=$(ws_ckpt_json_value img_path "$_state")
    [ -n "$_image" ] || _image="$_conf_image"
    _image="$WS_CKPT_ROOT$_image"
    _mount=$(ws_ckpt_json_value mount_path "$_state")
    [ -n "$_mount" ] || _mount="$_conf_mount"
    _mount="$WS_CKPT_ROOT$_mount"

    if [ "$_backend" = "BtrfsBase" ]; then
        _data_root=$(ws_ckpt_json_value data_root "$_state")
        ws_ckpt_say "kept $WS_CKPT_ROOT$_data_root on your btrfs filesystem (btrfs-base backend): remove it yourself if it is empty."
    elif [ -e "$_image" ]; then
        if ws_ckpt_is_mounted "$_mount" && ! umount "$_mount"; then
            ws_ckpt_say "kept $_image: unmounting $_mount failed; unmount it and delete the image yourself."
            return 0
        fi
        if command -v losetup >/dev/null 2>&1; then
            _detached=""
            for _dev in $(losetup -j "$_image" 2>/dev/null | cut -d: -f1); do
                losetup -d "$_dev" 2>/dev/null || true
                _detached=1
            done
            [ -z "$_detached" ] || sleep 1
            if [ -n "$(losetup -j "$_image" 2>/dev/null)" ]; then
                ws_ckpt_say "kept $_image: it is still attached to a loop device ($(losetup -j "$_image" | cut -d: -f1)); detach it and delete the image yourself."
                return 0
            fi
        fi
        rm -f "$_image" && ws_ckpt_say "removed $_image (no workspace was recorded)"
        rmdir "$_mount" 2>/dev/null || true
    else
        ws_ckpt_say "no loop image at $_image: nothing to remove there."
    fi

    rm -f "$_state" "$_lock" "$_state_dir/audit.jsonl"
    rmdir "$_state_dir/indexes" 2>/dev/null || true
    if rmdir "$_state_dir" 2>/dev/null; then
        ws_ckpt_say "removed $_state_dir (no workspace was recorded)"
    else
        ws_ckpt_say "removed the state files; kept $_state_dir because it still holds other files"
    fi
    return 0
}

# Apply the rule. Always returns 0: a package removal must never fail because of it.
ws_ckpt_remove_storage() {
    ws_ckpt_storage_rule || true
    ws_ckpt_report_dropins
    rm -f "$(ws_ckpt_memory)"
    rmdir "$WS_CKPT_ROOT/var/lib/ws-ckpt" 2>/dev/null || true
    return 0
}
