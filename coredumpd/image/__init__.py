"""The crashed process's image: its mappings, modules, memory and debug files."""
