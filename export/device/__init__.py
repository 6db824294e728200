"""What an artifact carries to the device and how it is checked for it: the device script, ELF reading, emulation."""
