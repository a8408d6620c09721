# SPDX-License-Identifier: GPL-3.0-or-later
"""A real systemd, booted in a container, for the "system" test tier.

Machine() makes a writable copy of the host root (an overlay whose upper layer is a private
tmpfs), optionally `meson install`s a build into it, boots it with systemd-nspawn and drives it
with nsenter (systemctl, busctl, journalctl, anything). On exit it powers the container off and
unmounts everything, also after a failure.

    with Machine(build_dir="build") as m:
        m.run(["systemd-sysusers"])
        m.systemctl("start", "loopabull@demo.service")
        m.wait_active("loopabull@demo.service")

Timings, measured on the development VM (2 cores, Debian 12, systemd 252, 5 runs each):
  start to ready (`systemctl is-system-running` says running): 0.6 s (max 0.63 s);
  with `meson install --no-rebuild` of the build before boot: 0.95 s (max 1.2 s);
  teardown (poweroff, nspawn gone, unmount, cleanup): 0.23 s (max 0.26 s).
  One pytest test with a fresh machine costs about 1 s.

Traps (each handled below, where it is explained):
  - nsenter waits for its child with WUNTRACED; systemd-shutdown's kill(-1, SIGSTOP) stops the
    child, nsenter stops itself and never reaps: shutdown and the dying PID 1 hang. spawn()ed
    commands are ended before poweroff.
  - nspawn --keep-unit puts the container in "payload" under its own cgroup: from the root cgroup
    every machine would share /payload. Each machine gets a cgroup of its own.
  - an empty /etc/machine-id means first boot: preset-all (enables units), systemd-firstboot.
  - the overlay's upper layer cannot be on overlayfs (CI may run in one): it is on a tmpfs.
  - killing nspawn does not kill the container (its init is in another session): the container
    is killed through its cgroup and PID namespace.
  - processes started with run()/spawn() live in the host's cgroup, not in any unit of the
    container: use systemd-run inside for anything that must be under systemd's supervision.
  - cgroup controllers: the host binds memory, pids, cpu to cgroup v1 and nspawn mounts those
    read-only; the container's cgroup2 (/sys/fs/cgroup/unified) has no controllers and there is
    no /sys/fs/cgroup/cgroup.controllers. MemoryMax=/TasksMax= are accepted and shown, not
    enforced: see enforcement_unavailable().

Requirements (as root): systemd-container (systemd-nspawn), util-linux (nsenter, unshare,
runuser), mount, meson (only to install a build). Debian's /usr/bin/python3, stdlib only (pytest
only for the fixture helpers).
"""
import contextlib
import itertools
import logging
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

log = logging.getLogger("loopabull.machine")

# Units the host image would start that are slow, useless or harmful in a test container. Masking a
# unit that is not installed is harmless, so the list covers what the development VM and a fresh
# Debian 12 with the project's dependencies may have.
DEFAULT_MASKS = (
    "postgresql.service", "postgresql@.service",
    "rabbitmq-server.service", "epmd.service", "epmd.socket",
    "apt-daily.timer", "apt-daily-upgrade.timer", "apt-daily.service", "apt-daily-upgrade.service",
    "man-db.timer", "man-db.service", "dpkg-db-backup.timer", "dpkg-db-backup.service",
    "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer", "logrotate.timer",
    "systemd-tmpfiles-clean.timer",
    "console-getty.service", "getty@.service", "serial-getty@.service", "container-getty@.service",
    "getty-static.service",
    "systemd-timesyncd.service", "systemd-networkd-wait-online.service",
    "cron.service", "anacron.service", "anacron.timer", "exim4.service", "postfix.service",
    "ssh.service", "ssh.socket", "rsyslog.service", "unattended-upgrades.service",
    "systemd-firstboot.service",
)

# The environment commands get inside the container (the caller's PATH may name a pyenv Python).
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "TERM": "dumb",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
    "SYSTEMD_LOG_COLOR": "0",
}

_counter = itertools.count(1)


class MachineError(RuntimeError):
    pass


class CommandFailed(MachineError, subprocess.CalledProcessError):
    """A command inside the machine failed; str() shows its output."""

    def __init__(self, returncode, cmd, output, stderr):
        subprocess.CalledProcessError.__init__(self, returncode, cmd, output, stderr)

    def __str__(self):
        return (f"command {shlex.join(self.cmd) if isinstance(self.cmd, list) else self.cmd} "
                f"exited {self.returncode}\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}")


def unavailable_reason():
    """Why a Machine cannot run here, or None. Only missing root or systemd-nspawn count."""
    if os.geteuid() != 0:
        return "system tests need root (mounts, systemd-nspawn)"
    if not shutil.which("systemd-nspawn"):
        return "systemd-nspawn is missing (Debian package systemd-container; run tools/setup-deps)"
    return None


def _mountpoints():
    """The mount points of this mount namespace, decoded (/proc/self/mountinfo escapes spaces)."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            p = line.split()[4]
            points.append(p.replace("\\040", " ").replace("\\011", "\t")
                          .replace("\\012", "\n").replace("\\134", "\\"))
    return points


def _mounts_under(path):
    path = str(path)
    return [p for p in _mountpoints() if p == path or p.startswith(path + "/")]


def _ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[1])


def _children(pid):
    return [int(d) for d in os.listdir("/proc") if d.isdigit() and _ppid(d) == pid]


def _comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def _alive(pid):
    """True while pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _pids_in_pidns(ns):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.readlink(f"/proc/{d}/ns/pid") == ns:
                    out.append(int(d))
            except OSError:
                pass
    return out


def _cgroup_hierarchies():
    """(mountpoint, current path) of the named systemd v1 hierarchy and the cgroup2 hierarchy."""
    mounts = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, opts = fields[sep + 1], fields[sep + 3]
            if fstype == "cgroup2":
                mounts.setdefault("", fields[4])
            elif fstype == "cgroup" and "name=systemd" in opts.split(","):
                mounts.setdefault("name=systemd", fields[4])
    found = []
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controllers in mounts:
                found.append((mounts[controllers], path))
    return found


class Machine:
    """A booted systemd container on an overlay of the host root.

    Parameters:
      build_dir: if given, `meson install -C build_dir --destdir ROOT` before boot.
      name: machine name (also the hostname); default unique per process and call.
      masks: extra units to mask (linked to /dev/null) in addition to DEFAULT_MASKS.
      unmask: units of DEFAULT_MASKS to leave alone (e.g. "rabbitmq-server.service").
      boot_timeout / stop_timeout: seconds.
      nspawn_args: extra systemd-nspawn arguments (e.g. ["--private-network"]).
      files: {container path: text} written before boot.
      rebuild: False adds --no-rebuild to meson install.
    """

    def __init__(self, build_dir=None, name=None, masks=(), unmask=(), boot_timeout=30.0,
                 stop_timeout=20.0, nspawn_args=(), files=None, rebuild=True):
        self.name = name or f"lbm-{os.getpid()}-{next(_counter)}-{secrets.token_hex(3)}"
        self.build_dir = Path(build_dir).resolve() if build_dir else None
        self.masks = tuple(u for u in DEFAULT_MASKS if u not in unmask) + tuple(masks)
        self.boot_timeout = boot_timeout
        self.stop_timeout = stop_timeout
        self.nspawn_args = list(nspawn_args)
        self.files = dict(files or {})
        self.rebuild = rebuild
        self.tmp = None          # our temporary directory on the host
        self.root = None         # host path of the container's /
        self.upper = None        # the overlay's upper layer (what the container changed)
        self.pid1 = None         # host pid of the container's systemd
        self.pidns = None
        self.nspawn = None       # Popen of systemd-nspawn
        self.boot_log = ""       # nspawn's console output, kept after teardown
        self.timings = {}
        self._cgroups = []
        self._spawned = []
        self._log_path = None

    # ---- lifecycle -----------------------------------------------------------------------------

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def start(self):
        t0 = time.monotonic()
        try:
            self._prepare()
            if self.build_dir:
                self.meson_install(self.build_dir)
            t1 = time.monotonic()
            self._boot()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        t2 = time.monotonic()
        self.timings.update(prepare=t1 - t0, boot=t2 - t1, start=t2 - t0)
        log.info("machine %s ready in %.2fs (prepare %.2fs, boot %.2fs)", self.name, t2 - t0,
                 t1 - t0, t2 - t1)
        return self

    def _prepare(self):
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.name}.",
                                         dir=os.environ.get("LOOPABULL_MACHINE_TMPDIR")))
        layers, self.root = self.tmp / "layers", self.tmp / "root"
        layers.mkdir()
        self.root.mkdir()
        # The layers live on a tmpfs of their own: an overlay upper layer cannot be on overlayfs
        # (CI may itself run in an overlay), and the upper must not lie inside the lower (/).
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(layers)], check=True)
        self.upper, work = layers / "upper", layers / "work"
        self.upper.mkdir()
        work.mkdir()
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir=/,upperdir={self.upper},workdir={work}", str(self.root)],
                       check=True)
        etc = self.root / "etc"
        # A machine id of its own: nspawn refuses the host's, and an empty one means "first boot"
        # (systemd-firstboot, preset-all of every unit: slower, and it enables what we mask).
        (etc / "machine-id").unlink(missing_ok=True)
        (etc / "machine-id").write_text(secrets.token_hex(16) + "\n")
        (etc / "hostname").write_text(self.name + "\n")
        for unit in self.masks:
            link = etc / "systemd" / "system" / unit
            link.unlink(missing_ok=True)
            link.symlink_to("/dev/null")
        # Bounded stop times: a stuck unit must not make teardown take 90 s.
        self.write_file("/etc/systemd/system.conf.d/50-loopabull-tests.conf",
                        "[Manager]\nDefaultTimeoutStopSec=15s\nDefaultTimeoutStartSec=60s\n")
        for path, text in self.files.items():
            self.write_file(path, text)

    def _make_cgroups(self):
        """A cgroup of its own for nspawn in each hierarchy: nspawn --keep-unit puts the container
        in "payload" under its own cgroup; from the root cgroup two machines would share it."""
        for mnt, cur in _cgroup_hierarchies():
            d = Path(mnt) / cur.lstrip("/") / f"loopabull-machine-{self.name}"
            try:
                d.mkdir()
                self._cgroups.append(d)
            except OSError as e:
                log.warning("cannot create cgroup %s (%s): machines must then run one at a time", d, e)

    def _boot(self):
        self._make_cgroups()
        self._log_path = self.tmp / "console.log"
        nspawn = ["systemd-nspawn", "-D", str(self.root), "--boot", f"--machine={self.name}",
                  "--register=no", "--keep-unit", "--link-journal=no", "-q",
                  *self.nspawn_args]
        # nspawn wants /run/systemd/nspawn on a tmpfs. It is mounted in a mount namespace private to
        # this nspawn (unshare -m), so the host is not touched and it disappears with nspawn.
        script = "".join(f'echo $$ > "{d}/cgroup.procs" && ' for d in self._cgroups) + \
            'mkdir -p /run/systemd/nspawn && mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn ' \
            '&& exec "$@"'
        with open(self._log_path, "wb") as out:
            self.nspawn = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "--", "sh", "-c", script, "sh", *nspawn],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env={**BASE_ENV, "SYSTEMD_LOG_COLOR": "0"})
        deadline = time.monotonic() + self.boot_timeout
        while self.pid1 is None:
            if self.nspawn.poll() is not None:
                raise MachineError(f"systemd-nspawn exited {self.nspawn.returncode} before boot:\n"
                                   + self._console_tail())
            if time.monotonic() > deadline:
                raise MachineError("no systemd in the container after "
                                   f"{self.boot_timeout}s:\n{self._console_tail()}")
            for pid in _children(self.nspawn.pid):
                if _comm(pid) == "systemd":
                    self.pid1 = pid
                    break
            else:
                time.sleep(0.02)
        self.pidns = os.readlink(f"/proc/{self.pid1}/ns/pid")

    def _wait_ready(self):
        deadline = time.monotonic() + self.boot_timeout
        state = None
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise MachineError(f"container exited {self.nspawn.returncode} during boot:\n"
                                   + self._console_tail())
            r = self.run(["systemctl", "is-system-running"], check=False, timeout=10)
            state = r.stdout.strip()
            if state == "running":
                self._ready = True
                return
            if state == "degraded":
                failed = self.run(["systemctl", "--failed", "--plain", "--no-legend"],
                                  check=False).stdout
                log.warning("machine %s is degraded; failed units:\n%s", self.name, failed)
                self.failed_units = [line.split()[0] for line in failed.splitlines() if line.strip()]
                self._ready = True
                return
            time.sleep(0.03)
        jobs = self.run(["systemctl", "list-jobs", "--no-pager"], check=False).stdout
        raise MachineError(f"machine {self.name} not ready after {self.boot_timeout}s "
                           f"(is-system-running: {state!r}); jobs:\n{jobs}\n{self._console_tail()}")

    failed_units = ()
    _ready = False

    def stop(self):
        """Power off, then kill what is left, unmount, remove the temporary directory. Safe to call
        more than once and after a failed start; raises only if something could not be cleaned."""
        t0 = time.monotonic()
        problems = []
        self._stop_spawned()
        if self.nspawn is not None and self.nspawn.poll() is None:
            asked = False
            if self.pid1 and _alive(self.pid1):
                try:
                    asked = self.run(["systemctl", "poweroff", "--no-block"], check=False,
                                     timeout=10).returncode == 0
                except Exception as e:  # noqa: BLE001 (teardown goes on whatever happens)
                    log.warning("poweroff of %s failed: %s", self.name, e)
            if not asked:
                # nspawn passes SIGTERM on to the container's init as SIGRTMIN+3 (halt); a systemd
                # still starting may not handle it yet, hence the short wait then.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.nspawn.pid, signal.SIGTERM)
            try:
                self.nspawn.wait(self.stop_timeout if self._ready else 3)
            except subprocess.TimeoutExpired:
                if self._ready:
                    log.warning("machine %s did not power off in %ss: killing it", self.name,
                                self.stop_timeout)
                    problems.append("did not power off in time")
        try:
            self._kill()  # a no-op after a clean poweroff; makes sure after anything else
        except MachineError as e:
            problems.append(str(e))
        self._stop_spawned()
        if self._log_path and self._log_path.exists():
            self.boot_log = self._log_path.read_text(errors="replace")
        for d in reversed(self._cgroups):
            if not self._rmdir_cgroup(d):
                problems.append(f"cgroup {d} not removed")
        self._cgroups.clear()
        if self.tmp is not None:
            for mp in (self.root, self.tmp / "layers"):
                if not self._umount(mp):
                    problems.append(f"{mp} still mounted")
            left = _mounts_under(self.tmp)
            if left:
                problems.append(f"mounts left under {self.tmp}: {left}; not removing it")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
                self.tmp = None
        self.timings["stop"] = time.monotonic() - t0
        log.info("machine %s stopped in %.2fs", self.name, self.timings["stop"])
        if problems:
            raise MachineError(f"teardown of {self.name}: " + "; ".join(problems))

    def _stop_spawned(self):
        """End what spawn() started. It must go before poweroff: systemd-shutdown does
        kill(-1, SIGSTOP) before its SIGTERM round, nsenter (outside the container, waiting with
        WUNTRACED) then stops itself, never reaps its child, and the shutdown waits for that zombie
        (and a dying PID 1 waits for it in the kernel) until nsenter is killed."""
        for p in self._spawned:
            if p.poll() is None:
                for pid in _children(p.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGCONT)
        for p in self._spawned:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._spawned.clear()

    def _kill(self):
        """SIGKILL whatever is left: every process in our cgroups (the container and nspawn) and in
        the container's PID namespace (also those that came in through nsenter), until none is."""
        deadline = time.monotonic() + 10
        while True:
            pids = set()
            for d in self._cgroups:
                for procs in d.rglob("cgroup.procs"):
                    with contextlib.suppress(OSError):
                        pids.update(int(p) for p in procs.read_text().split())
            if self.pidns:
                pids.update(_pids_in_pidns(self.pidns))
            if self.nspawn is not None and self.nspawn.poll() is None:
                pids.add(self.nspawn.pid)
            pids = {p for p in pids if p != os.getpid() and _alive(p)}
            if not pids:
                break
            if time.monotonic() > deadline:
                raise MachineError(f"processes of {self.name} survive SIGKILL: {sorted(pids)}")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if self.nspawn is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.nspawn.wait(0.05)
            time.sleep(0.02)
        if self.nspawn is not None:
            self.nspawn.wait()

    @staticmethod
    def _rmdir_cgroup(d):
        deadline = time.monotonic() + 5
        while True:
            try:
                for sub in sorted((p for p in d.rglob("*") if p.is_dir()),
                                  key=lambda p: len(p.parts), reverse=True):
                    with contextlib.suppress(FileNotFoundError):
                        sub.rmdir()
                d.rmdir()
                return True
            except FileNotFoundError:
                return True
            except OSError as e:
                if time.monotonic() > deadline:
                    log.warning("cannot remove cgroup %s: %s", d, e)
                    return False
                time.sleep(0.05)

    @staticmethod
    def _umount(mp):
        deadline = time.monotonic() + 5
        while _mounts_under(mp):
            r = subprocess.run(["umount", str(mp)], capture_output=True, text=True)
            if r.returncode != 0 and time.monotonic() > deadline:
                log.warning("umount %s: %s; detaching it lazily", mp, r.stderr.strip())
                subprocess.run(["umount", "-l", str(mp)], check=False)
                return not _mounts_under(mp)
            if r.returncode != 0:
                time.sleep(0.1)
        return True

    def _console_tail(self, lines=40):
        try:
            text = self._log_path.read_text(errors="replace")
        except (OSError, AttributeError):
            return "(no console output)"
        text = [line for line in text.splitlines() if line.strip()]
        return "--- console (last lines)\n" + "\n".join(text[-lines:])

    # ---- files ---------------------------------------------------------------------------------

    def path(self, p):
        """The host path of container path p (through the overlay). Beware: an absolute symlink
        inside the container resolves against the host when followed from here."""
        return self.root / str(p).lstrip("/")

    def write_file(self, path, text, mode=0o644, owner=None):
        """Write text (or bytes) at container path `path`, creating parent directories. owner:
        "user" or "user:group", resolved inside the running machine."""
        host = self.path(path)
        host.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            host.write_bytes(text)
        else:
            host.write_text(text)
        os.chmod(host, mode)
        if owner:
            self.run(["chown", owner, str(path)])
        return host

    def read_file(self, path):
        return self.path(path).read_text()

    def meson_install(self, build_dir=None, quiet=True):
        """`meson install -C BUILD --destdir ROOT`: the build appears at its prefix inside."""
        build_dir = Path(build_dir or self.build_dir).resolve()
        cmd = ["meson", "install", "-C", str(build_dir), "--destdir", str(self.root)]
        if quiet:
            cmd.append("--quiet")
        if not self.rebuild:
            cmd.append("--no-rebuild")
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise CommandFailed(r.returncode, cmd, r.stdout, r.stderr)
        return r

    # ---- commands ------------------------------------------------------------------------------

    def _command(self, cmd, user=None, env=None, cwd=None):
        if self.pid1 is None:
            raise MachineError(f"machine {self.name} is not running")
        if isinstance(cmd, str):
            cmd = ["sh", "-c", cmd]
        e = dict(BASE_ENV)
        e.update(env or {})
        inner = ["env", "-i", *(f"{k}={v}" for k, v in e.items())]
        if cwd:
            inner += ["-C", str(cwd)]
        if user is not None and user != "root":
            # runuser (PAM without pam_systemd) sets HOME, SHELL, USER, LOGNAME for the user.
            inner += ["runuser", "-u", str(user), "--"]
        # -r: the root of the target. setns() into the mount namespace alone gives the namespace's
        # root, which is the container's only when nspawn's MS_MOVE onto / landed there: not when
        # the caller is chrooted (CI runs in a chroot), where systemctl then says "offline".
        return ["nsenter", "-t", str(self.pid1), "-a", "-r", "-w", "--", *inner, *map(str, cmd)]

    def run(self, cmd, check=True, user=None, timeout=60, input=None, env=None, cwd=None):
        """Run cmd (a list, or a str for sh -c) inside the machine, in all its namespaces, with a
        clean environment (BASE_ENV + env). Returns CompletedProcess with text stdout/stderr."""
        full = self._command(cmd, user, env, cwd)
        r = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input,
                           stdin=None if input is not None else subprocess.DEVNULL)
        r.args = cmd
        if check and r.returncode != 0:
            raise CommandFailed(r.returncode, cmd, r.stdout, r.stderr)
        return r

    def spawn(self, cmd, user=None, env=None, cwd=None, stdout=None, stderr=None):
        """Start cmd inside the machine in the background; returns the Popen (of nsenter, which
        waits for it). Output goes to /dev/null unless stdout/stderr are given. Killed at stop,
        before the poweroff (see _stop_spawned). Its process is in no unit of the container."""
        full = self._command(cmd, user, env, cwd)
        p = subprocess.Popen(full, stdin=subprocess.DEVNULL,
                             stdout=stdout if stdout is not None else subprocess.DEVNULL,
                             stderr=stderr if stderr is not None else subprocess.DEVNULL)
        self._spawned.append(p)
        return p

    def systemctl(self, *args, check=True, timeout=60):
        return self.run(["systemctl", "--no-pager", *args], check=check, timeout=timeout)

    def busctl(self, *args, check=True, timeout=60):
        return self.run(["busctl", "--no-pager", *args], check=check, timeout=timeout)

    def daemon_reload(self):
        self.systemctl("daemon-reload")

    def reload_dbus(self):
        """After installing a D-Bus policy file: the bus refuses a name until it reloads."""
        self.systemctl("reload", "dbus.service")

    def show(self, unit, *props):
        """systemctl show as a dict of the given properties (all if none)."""
        args = ["show", unit] + [f"--property={p}" for p in props]
        out = self.systemctl(*args).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_state(self, unit, states=("active",), timeout=30, fail_states=("failed",)):
        """Poll `systemctl is-active unit` until it is one of states; raise (with status and
        journal) on timeout or on reaching one of fail_states."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.systemctl("is-active", unit, check=False).stdout.strip()
            if state in states:
                return state
            if state in fail_states or time.monotonic() > deadline:
                status = self.systemctl("status", unit, check=False).stdout
                raise MachineError(f"{unit} is {state!r}, wanted {'/'.join(states)}"
                                   f"{'' if state in fail_states else f' within {timeout}s'}:\n"
                                   f"{status}\n--- journal\n{self.journal(unit, lines=50)}")
            time.sleep(0.05)

    def wait_active(self, unit, timeout=30):
        return self.wait_state(unit, ("active",), timeout)

    def journal(self, unit=None, lines=None, output="short-precise", args=()):
        """The machine's journal (of this boot), of one unit if given, as text."""
        cmd = ["journalctl", "--no-pager", "-b", "-o", output, *args]
        if unit:
            cmd += ["-u", unit]
        if lines:
            cmd += ["-n", str(lines)]
        return self.run(cmd, check=False).stdout

    # ---- cgroups -------------------------------------------------------------------------------

    def cgroup_controllers(self):
        """The cgroup v2 controllers available to the container's systemd: the contents of
        /sys/fs/cgroup/cgroup.controllers (unified mode) or, in hybrid mode, of
        /sys/fs/cgroup/unified/cgroup.controllers. An empty set means systemd cannot enforce
        MemoryMax=, TasksMax=, CPUQuota= through cgroup v2."""
        r = self.run("cat /sys/fs/cgroup/cgroup.controllers 2>/dev/null || "
                     "cat /sys/fs/cgroup/unified/cgroup.controllers", check=False)
        return set(r.stdout.split())

    def enforcement_unavailable(self, controller):
        """None if the kernel enforces `controller` ("memory", "pids", "cpu") for units here, else
        the reason, for pytest.skip."""
        v2 = self.cgroup_controllers()
        if controller in v2:
            return None
        mode = self.run(["stat", "-f", "-c", "%T", "/sys/fs/cgroup"], check=False).stdout.strip()
        return (f"cgroup controller {controller!r} is not available to systemd in the container "
                f"(/sys/fs/cgroup is {mode}; cgroup v2 controllers: {sorted(v2) or 'none'}; the "
                "host binds memory/pids/cpu to cgroup v1, which nspawn mounts read-only): limits "
                "are set as properties but not enforced")


def machine_fixture(scope="function", name=None, **defaults):
    """A pytest fixture yielding a booted Machine(**defaults); skips if unavailable_reason()."""
    import pytest

    @pytest.fixture(scope=scope, name=name)
    def _machine():
        reason = unavailable_reason()
        if reason:
            pytest.skip(reason)
        with Machine(**defaults) as m:
            yield m

    return _machine
