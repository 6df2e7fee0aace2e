"""H&E image handling: per-spot patches."""

from senca.image.patches import extract_patches, section_image, tissue_fraction

__all__ = ["extract_patches", "section_image", "tissue_fraction"]
