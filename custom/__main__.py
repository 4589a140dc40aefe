"""Command line: ``python -m custom COMMAND [--flags]`` (fire).

Commands:
    demo      generate the demo data set (DESIGN §6): ``python -m custom demo --out data/demo``
    prepare   write a datalist from a public dataset's own layout:
              ``python -m custom prepare DATASET --root DIR --out FILE`` (``prepare --help`` lists
              the datasets; ``prepare DATASET --help`` shows the expected file tree and options)
    convert-checkpoint
              turn a published GLoRIA / MGCA checkpoint into a self-describing reclf checkpoint:
              ``python -m custom convert-checkpoint gloria|mgca PATH --out DIR --text_dir HF_DIR
              [--trust_pickle true]`` (prints what carried over and what was re-initialised)
    cache     decode a datalist's images once into the uint8 training cache (what ``cache_dir`` reads):
              ``python -m custom cache --datalist D --cache_dir C --image_size 224 [--dataset_dir R
              --split all --workers N --task pretrain|seg]`` (prints the time and the cache size)
    export-bundle
              write a self-contained model-zoo bundle (folder + zip) with its code and weights:
              ``python -m custom export-bundle reclf_pretrain|reclf_cls|reclf_seg --out DIR
              [--weights PATH/model.pt --pretrained PATH/model.pt|none --zip false --overwrite true]``
"""

from __future__ import annotations

import functools
from collections.abc import Callable


def _quiet_return(function: Callable[..., object]) -> Callable[..., None]:
    """fire prints a command's return value: the preparers print their own summary instead of
    echoing the whole datalist. ``functools.wraps`` keeps the signature and docstring for --help."""

    @functools.wraps(function)
    def command(*args, **kwargs) -> None:
        function(*args, **kwargs)

    return command


def main() -> None:
    import fire

    from .tools.convert import main_convert
    from .data.prepare import preparers
    from .data.demo import main_demo
    from .tools.export import main_export
    from .data.image_cache import main_cache

    fire.Fire({
        "demo": main_demo,
        "prepare": {name: _quiet_return(f) for name, f in preparers().items()},
        "convert-checkpoint": _quiet_return(main_convert),
        "export-bundle": _quiet_return(main_export),
        "cache": _quiet_return(main_cache),
    })


if __name__ == "__main__":
    main()
