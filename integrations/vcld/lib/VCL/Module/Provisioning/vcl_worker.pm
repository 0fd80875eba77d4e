#!/usr/bin/perl -w
###############################################################################
# VCL::Module::Provisioning::vcl_worker - vcld provisioning module that
# delegates every call to the vcl-worker fleet (Celery workers on the VM hosts).
#
# Each method runs, on the management node,
#     vcl-worker call <method> <reservation id> [argument] --wait --json
# (list-form exec, no shell) and reads the one JSON object it prints:
#     {"ok": true|false, "result": ..., "error": "...", "worker": "...", "queue": "...", ...}
# The worker on the computer's VM host runs the libvirt/qemu-img work, writes
# the computerloadlog rows libvirt.pm writes, and never touches request or
# computer states: those stay vcld's.  vcld needs no SSH to the VM hosts.
#
# Guest-side steps stay vcld's OS module's, called where libvirt.pm calls them:
# os->post_load() at the end of load() (the worker runs no post-load of its
# own for these calls), and in capture() imagemeta Sysprep set to 0 in vcld's
# data, os->pre_capture({end_state => 'on'}), then os->shutdown() before the
# worker writes the new master (the worker shuts the guest down itself only
# when there is no OS module or its shutdown failed).
#
# Environment (inherited by vcld's state processes):
#   VCL_WORKER_CLI   the vcl-worker executable (default: vcl-worker on PATH)
#   plus what the CLI reads: VCL_DATABASE_URL, CELERY_BROKER_URL,
#   CELERY_RESULT_BACKEND, VCL_CALL_TIMEOUT_<METHOD> (see the project README,
#   section "vcld integration").
###############################################################################
package VCL::Module::Provisioning::vcl_worker;

use strict;
use warnings;
use base qw(VCL::Module::Provisioning);
use English qw(-no_match_vars);
use JSON qw(decode_json);
use VCL::utils;

our $VERSION = '2.5.1';

# Runs one delegated call; returns the decoded reply when it succeeded, undef otherwise.
sub _call {
	my ($self, $method, @args) = @_;
	my $reservation_id = $self->data->get_reservation_id(0);
	if (!$reservation_id) {
		notify($ERRORS{'WARNING'}, 0, "vcl-worker $method: no reservation id in this object's data");
		return;
	}
	my $cli = $ENV{VCL_WORKER_CLI} || 'vcl-worker';
	my @command = ($cli, 'call', $method, $reservation_id, (grep { defined($_) && length($_) } @args), '--wait', '--json');
	notify($ERRORS{'DEBUG'}, 0, "delegating: " . join(' ', @command));
	my $fh;
	if (!open($fh, '-|', @command)) {
		notify($ERRORS{'WARNING'}, 0, "vcl-worker $method: cannot run $cli: $OS_ERROR");
		return;
	}
	my $output = do { local $INPUT_RECORD_SEPARATOR; <$fh> };
	close($fh);
	my $exit_status = $CHILD_ERROR >> 8;
	my ($line) = grep { /^\{/ } reverse split(/\n/, defined($output) ? $output : '');
	my $reply = defined($line) ? eval { decode_json($line) } : undef;
	if (ref($reply) ne 'HASH') {
		notify($ERRORS{'WARNING'}, 0, "vcl-worker $method: no JSON reply (exit status $exit_status): " . (defined($output) ? $output : ''));
		return;
	}
	my $where = join(', ', map { "$_=" . (defined($reply->{$_}) ? $reply->{$_} : '') } qw(worker queue seconds));
	if (!$reply->{ok}) {
		notify($ERRORS{'WARNING'}, 0, "vcl-worker $method failed ($where): " . (defined($reply->{error}) ? $reply->{error} : 'unknown error'));
		return;
	}
	notify($ERRORS{'OK'}, 0, "vcl-worker $method returned " . (defined($reply->{result}) ? $reply->{result} : 'null') . " ($where) " . (defined($reply->{detail}) ? $reply->{detail} : ""));
	return $reply;
}

# The reply's result (undef when the call failed).
sub _result {
	my $self = shift;
	my $reply = $self->_call(@_) or return;
	return $reply->{result};
}

# Called by VCL::Module::new for every state process; false -> "failed to create
# provisioning object".  libvirt.pm checks the VM host over SSH here.
sub initialize {
	my $self = shift;
	return $self->_result('initialize') ? 1 : 0;
}

# new.pm reload_image: READY (no load), POST_LOAD, RELOAD
sub node_status {
	my $self = shift;
	return $self->_result('node_status');
}

# new.pm: 1 = the image can be loaded; image.pm: must be 0 before capture
sub does_image_exist {
	my ($self, $image_name) = @_;
	return $self->_result('does_image_exist', $image_name);
}

# new.pm when does_image_exist is false: masters come from the host's repository, not partner nodes
sub retrieve_image {
	my ($self, $image_name) = @_;
	return $self->_result('retrieve_image', $image_name);
}

# new.pm: the domain is built and started by the VM host's worker (which waits
# for the guest to answer SSH but runs no post-load of its own), then the guest
# OS module's post_load runs as at the end of libvirt.pm's load()
sub load {
	my $self = shift;
	$self->_result('load') or return;
	my $os = $self->os(0);
	if (!$os || !$os->can('post_load')) {
		notify($ERRORS{'OK'}, 0, "load: OS post-load tasks not necessary");
		return 1;
	}
	if (!$os->post_load()) {
		notify($ERRORS{'WARNING'}, 0, "load: " . ref($os) . "->post_load() failed");
		return;
	}
	return 1;
}

# image.pm: as libvirt.pm's capture: Sysprep is never used for a libvirt image
# (set in vcld's data, which the OS module reads; the database is not changed),
# the OS module prepares the guest and then shuts it down; the worker writes the
# new master (shutting the guest down itself only when it is still on) and
# updates the image name/type
sub capture {
	my $self = shift;
	$self->data->set_imagemeta_sysprep(0);
	my $os = $self->os(0);
	if ($os && $os->can('pre_capture') && !$os->pre_capture({end_state => 'on'})) {
		notify($ERRORS{'WARNING'}, 0, "capture: " . ref($os) . "->pre_capture() failed");
		return;
	}
	if (!$os || !$os->can('shutdown')) {
		notify($ERRORS{'OK'}, 0, "capture: no OS module to shut the guest down, the worker shuts it down");
	}
	elsif ($os->shutdown()) {
		notify($ERRORS{'OK'}, 0, "capture: " . ref($os) . "->shutdown() powered the guest off");
	}
	else {
		notify($ERRORS{'WARNING'}, 0, "capture: " . ref($os) . "->shutdown() failed, the worker shuts the guest down (ACPI, then power off)");
	}
	return $self->_result('capture');
}

# image.pm after capture: MB for image.size
sub get_image_size {
	my ($self, $image_name) = @_;
	return $self->_result('get_image_size', $image_name);
}

# 'on', 'off', 'suspended', ... or undef when the domain does not exist
sub power_status { my $self = shift; return $self->_result('power_status'); }
sub power_on     { my $self = shift; return $self->_result('power_on'); }
sub power_off    { my $self = shift; return $self->_result('power_off'); }
sub power_reset  { my $self = shift; return $self->_result('power_reset'); }

# reclaim.pm (predictive module says unload)
sub unload { my $self = shift; return $self->_result('unload'); }

# new.pm tomaintenance: domains removed, computer noimage, vmhostid NULL
sub post_maintenance_action { my $self = shift; return $self->_result('post_maintenance_action'); }

1;
