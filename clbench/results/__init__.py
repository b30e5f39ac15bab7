"""Result files (one JSON per cell), tables and gates. Never imports torch."""
