"""What this machine is and how work shares it: CPU facts, ELF machines, thread counts, fair timing turns."""
