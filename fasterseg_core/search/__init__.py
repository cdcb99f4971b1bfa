"""Architecture search (method §3–§4, paper §3): the ``01_search`` stage.

Symbols: α (operator logits per cell), β (input choice of two-input cells), γ (width logits per feature
row, ``ratio_k_s``); architecture index k = 0 teacher, 1 student (they share every cell weight).

===================  ==================================================================================
module               what it owns
===================  ==================================================================================
:mod:`.data`         the two halves of the training split, epoch loaders, supernet-sized inputs (§3.1)
:mod:`.steps`        the passes, the architecture and weight steps, per-epoch head evaluation (§3.2–§3.4)
:mod:`.objective`    the differentiable table latency, the FPS target window, adaptive λ (§3.3)
:mod:`.derivation`   teacher and student derived after each epoch, their latencies and artefacts (§3.5, §4)
:mod:`.driver`       the stage: pretraining, the search epochs, checkpoints and resume (:func:`search`);
                     a study's shared pretraining alone (:func:`pretrain`)
:mod:`.random_arch`  random students (derived from random α/β/γ) in a latency window; distances
:mod:`.oneshot`      any α/β/γ scored with the supernet's shared weights, batch norm recalibrated
===================  ==================================================================================
"""

from .driver import SearchResult, pretrain, search

__all__ = ["SearchResult", "pretrain", "search"]
