#!/usr/bin/env bash
# MONAI Label for the reclf bundles (reclf_seg: segmentation infer + train; reclf_cls: classification
# infer). MONAI Label 0.8.5 cannot share the project's environment (it needs a CUDA torch build for
# its torchvision import, numpy<2 and pydicom<3), so this script keeps it in a virtual environment
# of its own (several GB; the first `setup` downloads for minutes).
#
#   apps/monailabel/run.sh setup                     # create / update MONAI Label's environment
#   apps/monailabel/run.sh bundles [--force]         # copy bundles/reclf_{seg,cls} into the app's model folder
#   apps/monailabel/run.sh studies DEST [--lung-masks] [--limit N]
#                                                    # a scratch studies folder: copies of the real
#                                                    # ../shared/data/cxr-notes images (+ their lung
#                                                    # masks as final labels); never label in ../shared
#   apps/monailabel/run.sh start --studies DIR [--port 8000] [--conf KEY VALUE ...]
#                                                    # setup + bundles, then the server on 127.0.0.1
#
# Environment: RECLF_MONAILABEL_VENV (default apps/monailabel/.venv), RECLF_MONAILABEL_PYTHON
# (a Python 3.11, default python3.11), RECLF_MONAILABEL_MODELS (the bundle copies the server reads,
# default apps/monailabel/model). See apps/monailabel/README.md.
set -euo pipefail

APP_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$APP_DIR/../.." && pwd)"
VENV="${RECLF_MONAILABEL_VENV:-$APP_DIR/.venv}"
PYTHON="${RECLF_MONAILABEL_PYTHON:-python3.11}"
MODELS_DIR="${RECLF_MONAILABEL_MODELS:-$APP_DIR/model}"
REQUIREMENTS="$APP_DIR/requirements.txt"
MONAILABEL_VERSION="0.8.5"
SHARED="$(cd "$REPO/.." && pwd)/shared"
CXR_NOTES="$SHARED/data/cxr-notes"

die() { echo "run.sh: $*" >&2; exit 1; }

setup() {
    local stamp="$VENV/.reclf-requirements"
    local want
    want="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1) monailabel==$MONAILABEL_VERSION"
    if [[ -x "$VENV/bin/monailabel" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        echo "MONAI Label environment up to date: $VENV"
        return
    fi
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set RECLF_MONAILABEL_PYTHON to a Python 3.11)"
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    echo "installing MONAI Label $MONAILABEL_VERSION into $VENV (several GB on the first run) ..."
    "$VENV/bin/python" -m pip install -r "$REQUIREMENTS"
    # --no-deps: its declared sam2 requirement builds from source against a CUDA torch and its
    # SAM2 task downloads a checkpoint; this app registers no SAM2 task
    "$VENV/bin/python" -m pip install --no-deps "monailabel==$MONAILABEL_VERSION"
    "$VENV/bin/python" -c "import monailabel.main, monai, torch; print('monailabel', monailabel.__version__, 'monai', monai.__version__, 'torch', torch.__version__)"
    echo "$want" > "$stamp"
}

copy_bundle() {  # copy_bundle NAME FORCE: configs (always refreshed), docs, and the weights if there are none yet
    local name="$1" force="$2" src="$REPO/bundles/$1" dst="$MODELS_DIR/$1"
    [[ -f "$src/configs/inference.yaml" ]] || die "$src/configs/inference.yaml not found"
    mkdir -p "$dst/models"
    rm -rf "$dst/configs" && cp -r "$src/configs" "$dst/configs"
    if [[ -d "$src/docs" ]]; then rm -rf "$dst/docs" && cp -r "$src/docs" "$dst/docs"; fi
    if [[ -f "$src/models/model.pt" ]] && { [[ "$force" == 1 ]] || [[ ! -f "$dst/models/model.pt" ]]; }; then
        cp "$src/models/model.pt" "$dst/models/model.pt"
        if [[ -f "$src/models/model.json" ]]; then cp "$src/models/model.json" "$dst/models/model.json"; fi
        echo "$name: weights copied from $src/models"
    elif [[ ! -f "$dst/models/model.pt" ]]; then
        echo "$name: no weights yet ($src/models/model.pt): train the bundle first$([[ $name == reclf_seg ]] && echo ', or POST /train/reclf_seg')"
    fi
}

bundles() {
    local force=0
    if [[ "${1:-}" == "--force" ]]; then force=1; fi
    for name in reclf_seg reclf_cls; do copy_bundle "$name" "$force"; done
    echo "bundles in $MODELS_DIR"
}

inside_shared() {  # refuse any studies folder in ../shared (MONAI Label writes labels/ into it)
    local real
    real="$(realpath -m "$1")"
    [[ "$real" == "$(realpath -m "$SHARED")" || "$real" == "$(realpath -m "$SHARED")"/* ]]
}

studies() {
    local dest="" lung_masks=0 limit=0
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --lung-masks) lung_masks=1 ;;
            --limit) limit="$2"; shift ;;
            -*) die "studies: unknown option $1" ;;
            *) dest="$1" ;;
        esac
        shift
    done
    [[ -n "$dest" ]] || die "studies: give a destination folder (a scratch copy, never under $SHARED)"
    inside_shared "$dest" && die "studies: $dest is inside $SHARED; MONAI Label writes labels/ into its studies folder: use a scratch copy elsewhere"
    [[ -d "$CXR_NOTES/images" ]] || die "$CXR_NOTES/images not found"
    mkdir -p "$dest"
    local n=0 name
    for image in "$CXR_NOTES"/images/*.png; do
        name="$(basename "$image")"
        cp -n "$image" "$dest/$name"
        if [[ "$lung_masks" == 1 && -f "$CXR_NOTES/masks/$name" ]]; then
            mkdir -p "$dest/labels/final"
            cp -n "$CXR_NOTES/masks/$name" "$dest/labels/final/$name"
        fi
        n=$((n + 1))
        if [[ "$limit" -gt 0 && "$n" -ge "$limit" ]]; then break; fi
    done
    echo "$n image(s) in $dest$([[ $lung_masks == 1 ]] && echo ", $(ls "$dest/labels/final" 2>/dev/null | wc -l) lung mask(s) as final labels")"
}

start() {
    local studies_dir="" port=8000 conf=()
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --studies) studies_dir="$2"; shift ;;
            --port) port="$2"; shift ;;
            --conf) conf+=(--conf "$2" "$3"); shift 2 ;;
            *) die "start: unknown argument $1" ;;
        esac
        shift
    done
    [[ -n "$studies_dir" ]] || die "start: --studies DIR is required (make one with: run.sh studies DIR)"
    inside_shared "$studies_dir" && die "start: $studies_dir is inside $SHARED; MONAI Label writes labels/ into its studies folder: make a scratch copy with run.sh studies DIR"
    [[ -d "$studies_dir" ]] || die "start: studies folder $studies_dir not found (make one with: run.sh studies DIR)"
    setup
    if [[ ! -f "$MODELS_DIR/reclf_seg/configs/inference.yaml" || ! -f "$MODELS_DIR/reclf_cls/configs/inference.yaml" ]]; then
        bundles
    fi
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    # the venv's python itself: MONAI Label's `monailabel` launcher runs whichever `python` is on PATH
    exec "$VENV/bin/python" -m monailabel.main start_server --app "$APP_DIR" --studies "$studies_dir" --host 127.0.0.1 \
        --port "$port" --conf models reclf_seg,reclf_cls --conf bundles_dir "$MODELS_DIR" "${conf[@]}"
}

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
    setup) setup ;;
    bundles) bundles "$@" ;;
    studies) studies "$@" ;;
    start) start "$@" ;;
    *) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; [[ -z "$cmd" || "$cmd" == -h || "$cmd" == --help ]] || exit 2 ;;
esac
