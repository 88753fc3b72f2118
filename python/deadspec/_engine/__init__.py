"""The private engine behind every reading (``read``, ``approach_slope``, the monitor, ...).

- :mod:`.sites`: the site catalogue (every name a reading can address: modules, MHA
  projections, attention heads);
- :mod:`.capture` and :mod:`.mha`: forward hooks, the patched ``nn.MultiheadAttention`` and the
  per-layer accumulators;
- :mod:`.losses`: per-sample loss conventions, sampled labels, :class:`TokenCrossEntropy`;
- :mod:`.fisher`: Fisher-Gram assembly from captured layer inputs and output gradients;
- :mod:`.collect`: :func:`collect` — one pass over the data with an options object;
- :mod:`.readout`: from collected states to a :class:`~deadspec.reading.Reading`;
- :mod:`.results`: the result types; :mod:`.inputs`: input normalisation and model state.

Nothing here is public API: :mod:`deadspec.reading`, :mod:`deadspec.approach` and
:mod:`deadspec.monitor` are.
"""

from deadspec._engine.collect import Collected, CollectOptions, collect, validate
from deadspec._engine.readout import (
    ReadOptions,
    activation_spectrum,
    read_states,
    reading_options,
)

__all__ = [
    "CollectOptions",
    "Collected",
    "ReadOptions",
    "activation_spectrum",
    "collect",
    "read_states",
    "reading_options",
    "validate",
]
