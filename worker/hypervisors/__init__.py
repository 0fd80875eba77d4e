"""Provisioning core: Apache VCL's libvirt.pm + libvirt/KVM.pm on libvirt-python and qemu-img.

Imports nothing from Celery or ``worker.db``; its only input is a :class:`worker.reservation.Reservation`.
Kept empty on purpose: importing a submodule (``qemuimg``, ``naming``) must not load libvirt.
"""
