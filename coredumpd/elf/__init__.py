"""ELF and core-note layouts (declared once) and the readers built on them."""
