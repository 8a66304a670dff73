"""What a team would build instead of Kiln, run next to it in the benchmarks."""
