"""``python -m backpropagate.cli``: what ``backprop`` runs (torchrun starts each rank this way)."""

from . import main

main()
