"""Live recommendations over HTTP (`recsys serve`): `app`."""
