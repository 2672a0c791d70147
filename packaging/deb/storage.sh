# ws-ckpt uninstall storage rule, shared by the RPM postuninstall scriptlet (pasted in by the spec) and the
# Debian postrm (pasted in by packaging/deb/build-deb).
#
# What it does: on a full uninstall (RPM erase, Debian purge) it removes the btrfs-loop image,
# state.json, the lock and the audit log, but ONLY when state.json exists, parses as a ws-ckpt
# state file and records no workspace at all (every workspace was released with
# `ws-ckpt release`). Otherwise it leaves every file where it is and prints what it kept and why.
#
# What it must not do: delete anything it cannot prove is empty (a corrupt, missing or unknown
# state file means "keep"), follow a guess, touch a btrfs-base filesystem, or fail the package
# removal (every error is reported and swallowed). It must not contain a percent sign: rpmbuild
# would expand it as a macro.
#
# WS_CKPT_ROOT=<dir> prefixes every path (config, state, image, mount) so that the rule can be
# tested in a sandbox; the scriptlets then also skip systemctl.

ws_ckpt_say() {
    echo "ws-ckpt: $*" >&2
}

# Last `key = "value"` of the main config, its .rpmsave copy and the drop-ins (lexical order),
# like ws-ckpt's own merge of scalar keys. Prints nothing when the key is not set.
ws_ckpt_conf_value() {
    _key="$1"
    _val=""
    for _f in "$WS_CKPT_ROOT/etc/ws-ckpt/config.toml.rpmsave" \
        "$WS_CKPT_ROOT/etc/ws-ckpt/config.toml" \
        "$WS_CKPT_ROOT"/etc/ws-ckpt/config.d/*.toml; do
        [ -f "$_f" ] || continue
        _v=$(sed -n "s/^[[:space:]]*$_key[[:space:]]*=[[:space:]]*\"\\([^\"]*\\)\".*/\\1/p" "$_f" | tail -n 1)
        [ -n "$_v" ] && _val="$_v"
    done
    echo "$_val"
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

# Apply the rule. Always returns 0: a package removal must never fail because of it.
ws_ckpt_remove_storage() {
    _state_dir=$(ws_ckpt_conf_value state_dir)
    _state_dir="$WS_CKPT_ROOT${_state_dir:-/var/lib/ws-ckpt}"
    _state="$_state_dir/state.json"
    _conf_image=$(ws_ckpt_conf_value image)

    if [ ! -e "$_state" ]; then
        for _img in "$_state_dir/btrfs-data.img" ${_conf_image:+"$WS_CKPT_ROOT$_conf_image"}; do
            if [ -e "$_img" ]; then
                ws_ckpt_say "kept $_img: there is no $_state saying which workspaces it holds."
                ws_ckpt_say "inspect it (losetup -f --show $_img; mount it) and delete it yourself when it holds nothing you need."
            fi
        done
        rmdir "$_state_dir" 2>/dev/null || true
        return 0
    fi

    if ! ws_ckpt_state_is_empty "$_state"; then
        ws_ckpt_say "kept the snapshot storage: $_state still records these workspaces:"
        _listed=$(ws_ckpt_state_workspaces "$_state")
        if [ -n "$_listed" ]; then
            echo "$_listed" | while IFS= read -r _ws; do ws_ckpt_say "    $_ws"; done
        else
            ws_ckpt_say "    (the file could not be read as a ws-ckpt state file)"
        fi
        ws_ckpt_say "kept $_state_dir (state, indexes, btrfs-loop image) and the mounted filesystem untouched."
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
    [ -n "$_image" ] && _image="$WS_CKPT_ROOT$_image"
    [ -n "$_image" ] || _image="$_state_dir/btrfs-data.img"
    _mount=$(ws_ckpt_json_value mount_path "$_state")
    [ -n "$_mount" ] || _mount=$(ws_ckpt_conf_value mount)
    _mount="$WS_CKPT_ROOT${_mount:-/mnt/btrfs-workspace}"

    if [ "$_backend" = "BtrfsBase" ]; then
        _data_root=$(ws_ckpt_json_value data_root "$_state")
        ws_ckpt_say "kept $WS_CKPT_ROOT$_data_root on your btrfs filesystem (btrfs-base backend); remove it yourself if it is empty."
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
