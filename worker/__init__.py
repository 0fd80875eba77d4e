"""vcl-worker: Apache VCL provisioning (vcld's libvirt/KVM module) as a distributed Celery worker."""

__version__ = "0.1.0"
