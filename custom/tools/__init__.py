"""Tools layer: bundle export (:mod:`.export`) and checkpoint conversion (:mod:`.convert`); the
command line is ``custom/__main__.py``. Tools may import every layer below; nothing imports tools."""
