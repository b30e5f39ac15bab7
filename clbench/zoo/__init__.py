"""The method zoo: released checkpoints of known methods as named encoders.

- :mod:`.catalogue`: the entries (``catalogue.yaml``): architecture, layout, preprocessing,
  weights, checksum, licence, published numbers; ``encoder_spec`` builds plugin options;
- :mod:`.download`: verified, resumable downloads into the clbench cache (standard library);
- :mod:`.published`: matching results to published numbers (``clbench report --published``).

The suite encoder is ``{type: zoo, method: NAME}`` (:mod:`clbench.encoders.zoo`). Nothing here
imports torch.
"""

from .catalogue import Entry, Published, encoder_spec, get_entry, load_catalogue, names

__all__ = ["Entry", "Published", "encoder_spec", "get_entry", "load_catalogue", "names"]
