"""`make bench`: end-to-end benchmarks of the runtime against a minimal relay, through a real mosquitto."""
