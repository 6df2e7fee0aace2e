"""2-D layouts of per-spot representations for plotting (exposed as ``senca.tl.umap``)."""

from senca.layout.embedding import umap, umap_layout

__all__ = ["umap", "umap_layout"]
