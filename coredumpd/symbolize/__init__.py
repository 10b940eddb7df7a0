"""Names for addresses: symbol tables, DWARF line tables, disassembly."""
