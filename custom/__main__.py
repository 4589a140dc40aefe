"""Command line: ``python -m custom COMMAND [--flags]`` (fire).

Commands:
    demo    generate the demo data set (DESIGN §6): ``python -m custom demo --out data/demo``
"""

from __future__ import annotations


def main() -> None:
    import fire

    from .demo import main_demo

    fire.Fire({"demo": main_demo})


if __name__ == "__main__":
    main()
