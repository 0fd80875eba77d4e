"""VCL database layer: models of vcl.sql, the engine, the store (vcld's DB logic) and seeding.

* :mod:`.store` - :class:`VclStore`, the facade the rest of the worker uses: one transaction per
  method around the session-level functions below.
* :mod:`.requests` - guarded request state changes (claim, transition, unclaim, fail) and the
  state/loadstate id cache; :mod:`.loadlog` - computerloadlog and log rows.
* :mod:`.load`, :mod:`.capture` - what new.pm and image.pm write; :mod:`.schedule` - vcld's main
  loop (due requests, check-in); :mod:`.reservation_row` - the one-SELECT reservation read;
  :mod:`.reads` - small lookups; :mod:`.inventory` - what is live on a VM host (the reaper).
* :mod:`.models`, :mod:`.engine`, :mod:`.errors`, :mod:`.seed` (demo schema, a site, web requests).

Nothing here imports libvirt or Celery: data leaves this package as frozen dataclasses.
"""
