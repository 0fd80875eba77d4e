-- Register the vcl-worker bridge as a vcld provisioning module (re-runnable).
-- module -> provisioning -> OS install type 'vmware' (the install type VCL links libvirt to), so
-- the same images (OS rows with installtype vmware, e.g. 36 vmwarelinux) run on it.
INSERT INTO module (name, prettyname, description, perlpackage)
VALUES ('provisioning_vcl_worker', 'Libvirt via vcl-worker',
        'libvirt/KVM provisioning delegated to the vcl-worker Celery workers on the VM hosts',
        'VCL::Module::Provisioning::vcl_worker')
ON DUPLICATE KEY UPDATE perlpackage = VALUES(perlpackage);

INSERT INTO provisioning (name, prettyname, moduleid)
SELECT 'vcl_worker', 'Libvirt via vcl-worker', id FROM module WHERE name = 'provisioning_vcl_worker'
ON DUPLICATE KEY UPDATE moduleid = VALUES(moduleid);

INSERT IGNORE INTO provisioningOSinstalltype (provisioningid, OSinstalltypeid)
SELECT p.id, t.id FROM provisioning p, OSinstalltype t WHERE p.name = 'vcl_worker' AND t.name = 'vmware';

-- Then move computers over, e.g. every libvirt VM:
--   UPDATE computer SET provisioningid = (SELECT id FROM provisioning WHERE name = 'vcl_worker')
--    WHERE provisioningid = (SELECT id FROM provisioning WHERE name = 'libvirt') AND deleted = 0;
