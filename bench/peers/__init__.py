"""streamq's peers, benchmarked the same way: see bench/peers/systems.py (what runs) and
bench/peers/drivers/ (one small script per system, run by that system's own virtualenv)."""
