"""Adapters for the published peers, each optional: SpaGCN, STAGATE, GraphST (see ``common``)."""
