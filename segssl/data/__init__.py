"""Data: readers for the SSL4MIS h5 layout and the built-in synthetic phantom."""
