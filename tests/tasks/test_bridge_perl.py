"""The bridge module's own logic (``integrations/vcld/lib/VCL/Module/Provisioning/vcl_worker.pm``) in
Perl, without vcld: what it calls on vcld's OS module and data, in which order, around the
``vcl-worker call`` it runs.

vcld's base class (``VCL::Module::Provisioning``) and ``VCL::utils`` are replaced by minimal stand-ins
written here (the object's ``data``/``os``, ``notify``); the CLI by a script that records its
arguments and prints a reply. Every step (stand-ins, CLI) appends one line to one trace file, so the
order across processes is the order of the lines. The real vcld drives the module in tests/vcld.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from worker.devkit.commands import REPO_ROOT

BRIDGE_LIB = REPO_ROOT / "integrations" / "vcld" / "lib"
BRIDGE_PM = BRIDGE_LIB / "VCL" / "Module" / "Provisioning" / "vcl_worker.pm"
RESERVATION = 42

pytestmark = pytest.mark.skipif(shutil.which("perl") is None, reason="no perl")

PROVISIONING_STUB = r"""package VCL::Module::Provisioning;
use strict; use warnings;
use VCL::utils;
sub new { my ($class, %a) = @_; return bless {%a}, $class; }
sub data { return $_[0]{data}; }
# VCL::Module::os: warns unless called with 0 when there is no OS object
sub os {
	my ($self, $warn) = @_;
	notify($ERRORS{'WARNING'}, 0, 'unable to return OS object') if !$self->{os} && (!defined($warn) || $warn);
	return $self->{os};
}
1;
"""

UTILS_STUB = r"""package VCL::utils;
use strict; use warnings;
use Exporter 'import';
our @EXPORT = qw(notify %ERRORS trace);
our %ERRORS = (OK => 'OK', WARNING => 'WARNING', DEBUG => 'DEBUG', CRITICAL => 'CRITICAL');
sub trace {
	open(my $fh, '>>', $ENV{BRIDGE_TRACE}) or die "trace: $!";
	print $fh join(' ', @_), "\n";
	close($fh);
}
sub notify { my ($level, $x, $message) = @_; trace('notify', $level, $message); }
1;
"""

# The stand-in for ``vcl-worker``: records its arguments; replies ok unless BRIDGE_FAIL names the method.
FAKE_CLI = r"""#!/usr/bin/perl
use strict; use warnings;
use lib $ENV{BRIDGE_STUBS};
use VCL::utils;
trace('cli', @ARGV);
my $method = $ARGV[1];
if (($ENV{BRIDGE_FAIL} // '') eq $method) {
	print qq({"ok": false, "result": 0, "error": "refused"}\n);
	exit 1;
}
print qq(progress noise\n{"ok": true, "result": 1, "worker": "w", "queue": "q", "detail": "done"}\n);
"""

DRIVER = r"""use strict; use warnings;
use VCL::utils;
use VCL::Module::Provisioning::vcl_worker;

package FakeData;
use VCL::utils;
sub new { return bless {sysprep => 1}, shift; }
sub get_reservation_id { return 42; }
sub get_imagemeta_sysprep { return $_[0]{sysprep}; }
sub set_imagemeta_sysprep {
	my ($self, $v) = @_;
	trace('data set_imagemeta_sysprep', $v);
	$self->{sysprep} = $v;
	return 1;
}

package FakeOS;
use VCL::utils;
sub new { my ($class, $data) = @_; return bless {data => $data}, $class; }
sub pre_capture {
	my ($self, $args) = @_;
	my $sysprep = $self->{data}->get_imagemeta_sysprep();
	trace('os pre_capture', "end_state=$args->{end_state}", "sysprep=$sysprep");
	return !(($ENV{BRIDGE_OS_FAIL} // '') eq 'pre_capture');
}
sub shutdown { trace('os shutdown'); return !(($ENV{BRIDGE_OS_FAIL} // '') eq 'shutdown'); }
sub post_load { trace('os post_load'); return !(($ENV{BRIDGE_OS_FAIL} // '') eq 'post_load'); }

package FakeOSWithoutShutdown;
use VCL::utils;
sub new { my ($class, $data) = @_; return bless {data => $data}, $class; }
sub pre_capture { trace('os pre_capture'); return 1; }

package main;
my ($method, $os_kind) = @ARGV;
my $data = FakeData->new();
my %os_class = (full => 'FakeOS', noshutdown => 'FakeOSWithoutShutdown');
my $os = $os_class{$os_kind} ? $os_class{$os_kind}->new($data) : undef;
my $bridge = VCL::Module::Provisioning::vcl_worker->new(data => $data, os => $os);
my $result = $bridge->$method();
trace('return', defined($result) ? $result : 'undef');
"""


@pytest.fixture
def stubs(tmp_path: Path) -> Path:
    root = tmp_path / "stubs"
    (root / "VCL" / "Module").mkdir(parents=True)
    (root / "VCL" / "Module" / "Provisioning.pm").write_text(PROVISIONING_STUB)
    (root / "VCL" / "utils.pm").write_text(UTILS_STUB)
    cli = tmp_path / "vcl-worker"
    cli.write_text(FAKE_CLI)
    cli.chmod(0o755)
    (tmp_path / "driver.pl").write_text(DRIVER)
    return root


def _run(stubs: Path, method: str, os_kind: str, **env: str) -> list[str]:
    """The trace lines of ``$bridge->method()`` (``os_kind``: full, noshutdown or none)."""
    trace = stubs.parent / "trace.log"
    trace.unlink(missing_ok=True)
    full_env = {
        **os.environ,
        "BRIDGE_TRACE": str(trace),
        "BRIDGE_STUBS": str(stubs),
        "VCL_WORKER_CLI": str(stubs.parent / "vcl-worker"),
        **env,
    }
    proc = subprocess.run(
        ["perl", "-I", str(stubs), "-I", str(BRIDGE_LIB), str(stubs.parent / "driver.pl"), method, os_kind],
        env=full_env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return trace.read_text().splitlines()


def _steps(lines: list[str]) -> list[str]:
    """The calls (notify lines left out)."""
    return [line for line in lines if not line.startswith("notify ")]


def _cli(method: str) -> str:
    return f"cli call {method} {RESERVATION} --wait --json"


def test_the_bridge_compiles(stubs: Path) -> None:
    proc = subprocess.run(["perl", "-c", "-I", str(stubs), str(BRIDGE_PM)], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 0 and "syntax OK" in proc.stderr, proc.stderr


def test_capture_resets_sysprep_then_pre_capture_then_os_shutdown_then_the_worker(stubs: Path) -> None:
    lines = _run(stubs, "capture", "full")
    assert _steps(lines) == [
        "data set_imagemeta_sysprep 0",
        "os pre_capture end_state=on sysprep=0",  # the OS module sees Sysprep off, as under libvirt.pm
        "os shutdown",
        _cli("capture"),
        "return 1",
    ]
    assert not [line for line in lines if line.startswith("notify WARNING")], lines


def test_capture_falls_back_to_the_worker_when_the_os_shutdown_fails(stubs: Path) -> None:
    lines = _run(stubs, "capture", "full", BRIDGE_OS_FAIL="shutdown")
    assert _steps(lines)[2:] == ["os shutdown", _cli("capture"), "return 1"]
    warned = [line for line in lines if line.startswith("notify WARNING")]
    assert len(warned) == 1 and "shutdown() failed, the worker shuts the guest down" in warned[0], lines


@pytest.mark.parametrize("os_kind", ["none", "noshutdown"])
def test_capture_without_an_os_shutdown_leaves_it_to_the_worker(stubs: Path, os_kind: str) -> None:
    lines = _run(stubs, "capture", os_kind)
    pre = ["os pre_capture"] if os_kind == "noshutdown" else []
    assert _steps(lines) == ["data set_imagemeta_sysprep 0", *pre, _cli("capture"), "return 1"]
    # No OS object is no warning of VCL::Module::os (the bridge asks with os(0)).
    assert not [line for line in lines if line.startswith("notify WARNING")], lines


def test_capture_stops_when_pre_capture_fails(stubs: Path) -> None:
    lines = _run(stubs, "capture", "full", BRIDGE_OS_FAIL="pre_capture")
    assert _steps(lines) == [
        "data set_imagemeta_sysprep 0",
        "os pre_capture end_state=on sysprep=0",
        "return undef",
    ]


def test_load_runs_the_os_post_load_after_the_worker(stubs: Path) -> None:
    assert _steps(_run(stubs, "load", "full")) == [_cli("load"), "os post_load", "return 1"]
    assert _steps(_run(stubs, "load", "none")) == [_cli("load"), "return 1"]
    # A failed worker load: no post_load; a failed post_load fails the load.
    assert _steps(_run(stubs, "load", "full", BRIDGE_FAIL="load")) == [_cli("load"), "return undef"]
    assert _steps(_run(stubs, "load", "full", BRIDGE_OS_FAIL="post_load")) == [
        _cli("load"),
        "os post_load",
        "return undef",
    ]
