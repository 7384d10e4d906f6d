"""A throwaway PostgreSQL server for tests that check Quarry's answers against
PostgreSQL's.

The server is Debian's `postgresql` (installed by .ci/run), started by `initdb`
and `pg_ctl` in a temporary directory, listening on a Unix socket in that
directory only (no TCP port); `stop` removes it. As root, it runs as the
`postgres` user, since PostgreSQL refuses to run as root.
"""
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile

import psycopg


class Server:
    """A throwaway PostgreSQL server on a Unix socket in a temporary directory,
    and with `tcp`, on a free port of 127.0.0.1 too (`self.port`), for
    clients that cannot use a Unix socket (JDBC)."""

    def __init__(self, tcp=False, settings=(), hba=None, files=()):
        """`settings`: extra `name=value` server settings; `hba`: the lines of
        pg_hba.conf instead of initdb's; `files`: (source, name) pairs copied
        into the data directory (owned by the server's user, mode 0600), such
        as a TLS certificate and key."""
        initdbs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                         key=lambda p: int(p.split("/")[4]))
        if not initdbs:
            sys.exit("no PostgreSQL server: install Debian's postgresql (.ci/run does)")
        self.bin = os.path.dirname(initdbs[-1])
        self.dir = tempfile.mkdtemp(prefix="quarry-pg-")
        os.chmod(self.dir, 0o755)
        self.data = os.path.join(self.dir, "data")
        self.user = None
        if os.geteuid() == 0:
            self.user = pwd.getpwnam("postgres")
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self.run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust",
                 "-E", "UTF8", "--locale=C")
        for source, name in files:
            target = os.path.join(self.data, name)
            shutil.copyfile(source, target)
            os.chmod(target, 0o600)
            if self.user is not None:
                os.chown(target, self.user.pw_uid, self.user.pw_gid)
        if hba is not None:
            with open(os.path.join(self.data, "pg_hba.conf"), "w") as out:
                out.write("\n".join(hba) + "\n")
        self.port = 5432
        listen = "''"
        if tcp:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
            listen = "127.0.0.1"
        self.run("pg_ctl", "-D", self.data, "-w", "-l", os.path.join(self.dir, "log"),
                 "-o", f"-k {self.dir} -p {self.port} -c listen_addresses={listen} -c fsync=off"
                 + "".join(f" -c {setting}" for setting in settings),
                 "start")

    def run(self, program, *args):
        command = [os.path.join(self.bin, program), *args]
        if self.user is not None:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{program} failed: {done.stdout}{done.stderr}")

    def connect(self, dbname):
        return psycopg.connect(host=self.dir, port=self.port, user="postgres", dbname=dbname,
                               autocommit=True)

    def stop(self):
        try:
            self.run("pg_ctl", "-D", self.data, "-w", "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
