# Kernel modules for an initramfs, sourced by build.sh and nbdroot.sh:
# index_modules MODSRC, then add_module MODSRC ROOT NAME for each module
# wanted (its dependencies first, from depends=, decompressed into
# ROOT/lib/modules/KREL, vermagic checked); ORDER is then the load order.
# Needs log, die, KPKG and KREL from the caller.

declare -A MODPATH=() BUILTIN=() SEEN=()
ORDER=()

index_modules() { # MODSRC
    local f n
    while IFS= read -r f; do
        n=${f##*/}
        n=${n%%.ko*}
        MODPATH[${n//-/_}]=$f
    done < <(cd "$1" && find kernel -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')
    if [ -f "$1/modules.builtin" ]; then
        while IFS= read -r f; do
            n=${f##*/}
            n=${n%%.ko*}
            BUILTIN[${n//-/_}]=1
        done <"$1/modules.builtin"
    fi
}

decompress() { # SRC DST
    case "$1" in
        *.ko) cp "$1" "$2" ;;
        *.ko.xz) xz -dc "$1" >"$2" ;;
        *.ko.zst) zstd -q -dc "$1" >"$2" ;;
        *.ko.gz) gzip -dc "$1" >"$2" ;;
    esac
}

modinfo_field() { # FIELD KOFILE (uncompressed)
    tr '\0' '\n' <"$2" | sed -n "s/^$1=//p" | head -n 1
}

add_module() { # MODSRC ROOT NAME: its dependencies first, then itself
    local name=${3//-/_} rel dst dep deps
    [ -z "${SEEN[$name]:-}" ] || return 0
    SEEN[$name]=1
    if [ -n "${BUILTIN[$name]:-}" ]; then
        log "module $name is built in"
        return 0
    fi
    rel=${MODPATH[$name]:-}
    [ -n "$rel" ] || die "module $name not found in $KPKG"
    dst=$2/lib/modules/$KREL/${rel%%.ko*}.ko
    mkdir -p "$(dirname "$dst")"
    decompress "$1/$rel" "$dst"
    case "$(modinfo_field vermagic "$dst")" in
        "$KREL "*) ;;
        *) die "$rel: vermagic is not $KREL" ;;
    esac
    deps=$(modinfo_field depends "$dst")
    for dep in ${deps//,/ }; do
        add_module "$1" "$2" "$dep"
    done
    ORDER+=("/lib/modules/$KREL/${rel%%.ko*}.ko")
}
