"""The README's example handler package: ``PYTHONPATH=examples streamq consume ... --handler
mypkg.handlers:publish``."""
