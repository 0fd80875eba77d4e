"""Delegated mode: vcld owns the reservation lifecycle and calls the worker as its provisioning module.

The Perl module ``integrations/vcld/lib/VCL/Module/Provisioning/vcl_worker.pm`` runs
``vcl-worker call <method> <reservation id> --wait --json`` on the management node; the CLI sends the
``vcl.call`` task to the VM host's queue and the host's worker runs :func:`operations.run_call`.
Unlike the dispatcher's flows, nothing here writes ``request`` or ``computer`` *states*: those are
vcld's. The worker writes only what libvirt.pm itself writes (computerloadlog rows of ``load``, the
image rename of ``capture``, ``noimage``/``vmhostid`` of ``post_maintenance_action``).
"""
