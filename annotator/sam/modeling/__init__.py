"""Network modules only (no loading, no prompts): the TinyViT image encoder of MobileSAM.

The prompt encoder, mask decoder and the ViT-B/L/H encoders come from ``segment_anything``.
"""

from annotator.sam.modeling.tiny_vit import TinyViT

__all__ = ["TinyViT"]
