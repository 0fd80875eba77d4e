"""Real-stack kit shared by the demo, the tests and the benchmarks (never imported by the product).

Throwaway VCL databases loaded from ``vcl.sql``, master images, the bootable test guest, isolated
libvirt networks, a Celery worker subprocess: each helper exists once, here.
"""
