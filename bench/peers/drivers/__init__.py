"""One script per system, each run by the python of that system's virtualenv: ``work`` runs a
worker until SIGTERM, ``produce`` enqueues jobs and prints how long that took as JSON. Only the
standard library, the system's own package and bench.probe are imported here."""
