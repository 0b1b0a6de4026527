"""One module per box of the paper's Figure 2."""
