"""Address space of the crashed process, CFI/frame-pointer/scan unwinding, symbols."""
