"""``pebal calibrate``: pick a model's threshold on a user's own camera (see :mod:`.cli`)."""
