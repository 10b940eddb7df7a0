"""The pages of coredumpd(8) and coredumpd.conf(5) as data.

coredumpd's own argparse lives in :mod:`coredumpd.pipeline.main` (a lower
layer, which cannot import cli/); tests/cli/test_manpages.py checks that every
command and option of that parser is documented here.  The configuration keys
are checked against :func:`coredumpd.config.config_keys`.
"""

from __future__ import annotations

from coredumpd.cli.spec import Command, Option, Program, Section

# core(5) "Naming of core dump files"; what each specifier gives was checked
# on this machine (shared/FACTS.md).
SPECIFIERS = (
    ("%P", "PID of the crashed process in the initial PID namespace."),
    ("%i", "TID of the crashing thread, as seen in its own PID namespace."),
    ("%p", "PID in the crashed process's own PID namespace (1 for a container's init)."),
    ("%u", "real UID of the crashed process."),
    ("%g", "real GID of the crashed process."),
    ("%s", "number of the signal that caused the dump."),
    ("%t", "time of the dump, seconds since the Epoch."),
    ("%c", "soft RLIMIT_CORE of the crashed process (18446744073709551615: unlimited)."),
    ("%h", "host name (uname nodename)."),
    ("%d", "dump mode, as prctl(PR_GET_DUMPABLE) returns it."),
    ("%F", ("a pidfd of the crashed process (Linux 6.16 and later); used to make sure "
           "/proc is read for the right process.")),
    ("--config FILE", "the configuration file given to install."),
)

# Why install sets the limit it sets and how the handlers bound their memory
# (issue 9); the figures come from tests/hardening/test_storm.py on this machine.
STORMS = (
    ("The kernel hands a crash to a pipe handler only while fewer than "
     "kernel.core_pipe_limit dumps are in flight; over the limit it drops the crash "
     "before any handler runs (\"over core_pipe_limit, skipping core dump\"). "
     "systemd's value, 16, lost 11 of 64 simultaneous crashes. install therefore sets "
     "one per 32 MiB of RAM, at least 64 and at most 1024 (753 with 24 GiB). It does "
     "not set 0 (no limit): the kernel would then not wait for the handler, and "
     "/proc/PID could vanish while it is read."),
    ("The handlers bound their memory themselves. Each first takes one of max(4, CPUs) "
     "slots, at most 16 (an flock(2) on /run/coredumpd/handler.N, released when the "
     "handler exits, however it ends), and waits, before reading anything, while all "
     "are taken. The kernel holds the crashed process meanwhile (its dump blocks on the "
     "pipe, /proc/PID stays), so waiting costs time, never the crash. A waiting handler "
     "has imported almost nothing: 7.8 MiB RSS, of which about 3 MiB its own (PSS 3.1 "
     "MiB); a working one peaks near 47 MiB RSS, also for a 192 MiB core, which it "
     "streams. So a storm costs at most max(4, CPUs) working handlers of ~50 MiB plus "
     "about 3 MiB per waiting one: even core_pipe_limit of them stay near a tenth of "
     "the RAM. If /run/coredumpd cannot be used, nobody waits."),
    ("The analysis jobs, started after the kernel let the process go, run at nice 15 "
     "and wait the same way for one of max(1, CPUs - 1) slots (/run/coredumpd/analysis.N) "
     "before importing the analysis; a job and its sandbox peak near 90 MiB RSS. One CPU "
     "is left to the next crash's capture: niceness alone is not enough (on 2 CPUs, two "
     "busy loops at nice 15 made a tiny core's crash->reap 50% slower, one loop did not)."),
    ("The handler queues each crash (DIR/analysis-queue/ID, one file per crash, claimed "
     "with flock(2) and removed once the analysis is stored) and starts an analysis job "
     "only when one of the store's max(1, CPUs - 1) drain locks "
     "(DIR/analysis-queue.drainers/) is free: the job holds it while it analyses, one "
     "after the other, the crashes of its store still queued, until none is left (in a "
     "storm: none has come for a second), so a storm of 64 crashes starts one job, not 64. "
     "The job is a small process that forks the drain: a drain that was killed (SIGKILL, "
     "the OOM killer) is forked again at once, and a crash whose analysis failed, or ended "
     "its drain, three times is marked failed with the reason (corectl shows it) while "
     "the queue goes on. Crashes left queued by a job killed together with its drain are "
     "analysed after the store's next crash. From its second crash on a drain "
     "forks each sandbox from a zygote, one root process that has imported the analysis "
     "and reads no core (38 MiB RSS), instead of starting an interpreter per crash (a "
     "zygote forks the sandboxes of one analysis user only, and is replaced after 32: its "
     "children share its address space layout; each sandbox runs in a PID namespace of "
     "its own, so that nothing it starts outlives it): in a "
     "storm of 64 crashes the analyses' CPU went from 19.0 s to 3.7 s. A crash whose core "
     "was not kept (Storage=none, rate limited) is analysed by its own job only."),
    ("Measured on 2 CPUs and 24 GiB with the installed settings (core_pipe_limit 753): "
     "64 processes crashing at once, four of them with 192 MiB cores, analysis on: 64 "
     "rows, 64 verified cores, 64 analyses; at most 4 handlers working and 64 alive at "
     "once, their PSS together at most 250 MiB, and at most 2 analysis sandboxes (with "
     "two slots then). The "
     "same storm with the slots disabled: 64 handlers working at once, 1365 MiB PSS, 13 "
     "sandboxes. 64 crashes of one program: 64 rows, 10 cores (RateLimitBurst=10), 54 "
     "rows whose core reason says \"rate limited\"."),
)

COREDUMPD = Program(
    name="coredumpd", section=8,
    summary="store every crash and explain it (kernel.core_pattern handler)",
    synopsis=("install [--config FILE] [--socket | --pipe]", "uninstall",
              "serve [--config FILE] [--supervise] [--socket PATH] [--workers N]",
              "publish [--config FILE]",
              "%P %i %p %u %g %s %t %c %h %d %F [--config FILE]"),
    description=(
        ("coredumpd is a handler for kernel.core_pattern, a replacement for "
        "systemd-coredump(8). The kernel starts it for every crash with the core on "
        "standard input. It streams the core once into a seekable lz4 file (which "
        "lz4 -d restores byte for byte), records what is visible only while /proc/PID "
        "exists, lets the kernel reap the crashed process, and then, detached and "
        "resource-limited, unwinds every thread, symbolizes the frames and runs the "
        "root-cause rules. One row per crash goes into the index read by corectl(1), "
        "and one entry into the journal with systemd-coredump's fields."),
        ("The handler never depends on PID 1 or on the journal daemon: a crash of "
        "either is still stored and indexed, and a one-line summary goes to /dev/kmsg."),
    ),
    commands=(
        Command("install", "register the handler in kernel.core_pattern",
                "Writes |/path/to/coredumpd followed by the specifiers below into "
                "kernel.core_pattern and sets kernel.core_pipe_limit (see CRASH STORMS), "
                "remembering the previous values (once remembered, they are not replaced "
                "by a pattern of coredumpd's own found in force: a socket pattern, or any "
                "coredumpd handler's). Fails, changing nothing, when the "
                "pattern would exceed the kernel's 128-byte limit, or when the "
                "configuration file has a line or value it cannot read (the message "
                "names the file, the line and the key). With --socket (the default where "
                "the kernel has the coredump socket, Linux 6.16 and later) it then starts "
                "coredumpd serve --supervise, detached, which switches kernel.core_pattern "
                "to @@/run/coredumpd/coredump.socket once the server accepts; install "
                "waits for that and fails, leaving the pipe handler registered, if it does "
                "not happen within 30 seconds. With --pipe the pipe handler stays "
                "registered and a server that an earlier install started is stopped.",
                (Option(("--config",), "the handler started by the kernel uses FILE",
                        metavar="FILE"),
                 Option(("--socket",), "hand cores over through the kernel's coredump socket"),
                 Option(("--pipe",), "hand cores over through the pipe handler"))),
        Command("uninstall", "restore the previous kernel.core_pattern",
                "Stops the supervised server that install started (it was recorded with "
                "its PID and start time, so no other process is signalled), then restores "
                "kernel.core_pattern and kernel.core_pipe_limit as install found them. It "
                "stops nothing it did not start. A saved core_pattern that would lose every "
                "crash now (its program is not there, a coredumpd handler's configuration "
                "file is gone, no socket is at its socket path) is not restored: the "
                "kernel's default, core, is written instead, and a message says so."),
        Command("serve", "the capture server on the kernel's coredump socket",
                "Listens on an AF_UNIX stream socket of its own (no socket activation) "
                "for kernel.core_pattern = @@PATH. Each connection is one crash, and the "
                "server decides before the kernel writes a byte: the core is streamed "
                "(COREDUMP_KERNEL) or, for a crash that the rate limit would not keep or "
                "whose RLIMIT_CORE is below a page, rejected (COREDUMP_REJECT): the index "
                "row is written with the reason and no dump is made. /proc/PID is read "
                "while the kernel holds the process (checked against the connection's "
                "pidfd, so that a reused PID cannot mix two processes up): a streamed "
                "core is acknowledged with COREDUMP_WAIT, which keeps the process until "
                "the server closes the connection, so /proc is read while the kernel "
                "writes the core; for a rejected one, before the answer. The core goes "
                "through the same lz4 writer, index, journal entry and sandboxed "
                "analysis as with the pipe handler. The server keeps --workers forked "
                "workers waiting, each with the configuration, the index and a spool file "
                "already open; one serves one crash and exits, and the server forks the "
                "next. The configuration is read once, and again when the file changes "
                "(no restart needed). At most --workers crashes are served at once; "
                "further crashes wait in the kernel's accept queue (backlog 4096), none is "
                "dropped and memory stays bounded. The server and its workers are not "
                "dumpable: the kernel ignores RLIMIT_CORE for socket patterns, and a "
                "server dumping into its own socket would wait for itself. Without "
                "--supervise the server does not touch kernel.core_pattern. SIGTERM stops "
                "accepting, serves the queue and exits. Once its workers wait, the server "
                "also starts the analysis worker for corectl analyze (see corectl(1)): a "
                "process of its own, with its own socket (--analyze-socket, mode 0666), "
                "that has imported corectl and the analysis once and forks a child per "
                "request; the worker runs at nice 0, not the server's Nice=-5. The child "
                "joins the client's cgroups first (/proc/PID/cgroup: the limits of the "
                "client's slice apply to its command; refused when it cannot), then takes "
                "the client's credentials from the connection "
                "(SO_PEERCRED, SO_PEERGROUPS), its resource limits (never above the "
                "client's), nice value, working directory, environment, umask and "
                "standard streams, sets PR_SET_NO_NEW_PRIVS and is not dumpable, and runs "
                "the command there; clients in another mount namespace or with another "
                "root directory are refused (corectl then runs the command itself), as "
                "are clients beyond the number of CPUs (at least 2) running at once, and "
                "clients of another installation. A client that exits or is interrupted "
                "ends its child. The analysis worker is restarted when it ends (after a "
                "pause that doubles, up to 30 s, while it ends within a minute), when "
                "coredumpd's files change on disk, and stops with the server.",
                (Option(("--config",), "the configuration file", metavar="FILE"),
                 Option(("--supervise",), (
                     "run a supervisor that holds the listening socket, starts the server, "
                     "sets kernel.core_pattern to @@PATH once the server accepts and puts "
                     "the pipe handler back the moment it exits (killed, crashed), then "
                     "restarts it. A crash while no server accepts goes to the pipe "
                     "handler; crashes already queued on the socket wait for the next "
                     "server. SIGTERM puts the pipe handler back, then stops the server."
                     " This is what coredumpd.service runs.")),
                 Option(("--socket",), ("where to listen (default "
                                        "/run/coredumpd/coredump.socket)"), metavar="PATH"),
                 Option(("--workers",), ("crashes served at once, the workers kept "
                                         "waiting (default twice the CPUs, at least 4)"),
                        metavar="N"),
                 Option(("--handler",), ("with --supervise: the pipe handler to register "
                                         "while no server accepts (default the launcher "
                                         "that install writes)"), metavar="PATH"),
                 Option(("--restart-sec",), ("with --supervise: wait before restarting a "
                                             "server that ended, doubled after each quick "
                                             "failure up to 30 (default 1)"),
                        metavar="SECONDS"),
                 Option(("--analyze-socket",), ("where the analysis worker for corectl "
                                                "analyze listens (default "
                                                "/run/coredumpd/analyze.socket with the "
                                                "default --socket, else none; empty: none)"),
                        metavar="PATH"),
                 Option(("--listen-fd",), ("serve on this inherited listening socket (how "
                                           "the supervisor starts the server)"), metavar="FD"),
                 Option(("--ready-fd",), ("write one byte to this file descriptor once "
                                          "accepting, then close it"), metavar="FD"),
                 Option(("--fallback",), ("the core_pattern to put back, from the server's "
                                          "own @@PATH, if its supervisor dies before it (the "
                                          "server then gets SIGTERM: PR_SET_PDEATHSIG)"),
                        metavar="PATTERN"))),
        Command("publish", "send the fleet outbox to the database now",
                "With a fleet database configured ([Fleet] Database= in "
                "coredumpd.conf(5)), every analysed crash's record (metadata, "
                "signature, annotations, the crashed thread's frames, modules with "
                "build-ids and packages, the host's identity; never the core's memory or "
                "the environment) waits in an outbox in the storage directory and is sent "
                "in batches after each crash. publish drains the outbox once, by hand, "
                "creating or migrating the database's schema first when this user may, and "
                "says how many records it sent and how many still wait. It exits with 1 "
                "when the database could not take them; they stay in the outbox.",
                (Option(("--config",), "configuration file", metavar="FILE"),)),
    ),
    extra_sections=(
        Section("HANDLER ARGUMENTS", (
            ("Run by the kernel, coredumpd takes the values of these core_pattern "
            "specifiers (see core(5)) as its arguments, in the order install writes "
            "them; it runs with no terminal, an empty environment, cwd / and only "
            "file descriptor 0 open."),
        ), items=SPECIFIERS),
        Section("CRASH STORMS", STORMS),
        Section("FILES", items=(
            ("/etc/coredumpd/coredumpd.conf", "configuration, see coredumpd.conf(5)."),
            ("/var/lib/coredumpd/", ("stored cores (core.COMM.UID.BOOTID.PID.USEC.lz4) and "
             "index.sqlite, the index of crashes.")),
            ("/var/lib/coredumpd/fleet-outbox.sqlite", ("fleet records waiting to be sent "
             "to the fleet database (publish).")),
            ("/proc/sys/kernel/core_pattern", "where install registers the handler."),
            ("/run/coredumpd/coredump.socket", "the socket coredumpd serve listens on."),
            ("/run/coredumpd/analyze.socket", "the socket of its analysis worker."),
            ("coredumpd.service", ("the systemd unit (systemd/ in the source tree): "
             "coredumpd serve --supervise with Restart=always, and ExecStopPost= "
             "coredumpd install --pipe so that the pipe handler is registered whenever "
             "the unit is not running.")),
        )),
        Section("EXIT STATUS", (
            ("install, uninstall and serve exit with 0 on success and non-zero with a message "
            "on standard error otherwise. As a handler, coredumpd stores what it "
            "received whatever happens; its exit status is not seen by anyone."),)),
    ),
    see_also=("corectl(1)", "coredumpd.conf(5)", "core(5)", "systemd-coredump(8)",
              "lz4(1)"),
)

# Documentation of each [Coredump] key; coredumpd.config.config_keys() must
# list exactly these (tests/cli/test_manpages.py).
CONFIG_KEYS = (
    ("Directory=", ("Where stored cores and the index (index.sqlite) live. Default "
                   "/var/lib/coredumpd. Must be an absolute path.")),
    ("Storage=", ("external (store the core, compressed) or none (record metadata and "
                 "the analysis only). Default external.")),
    ("ProcessSizeMax=", ("Cores larger than this are stored but not analysed. Sizes take "
                        "K, M, G, T (base 1024). Default 32G.")),
    ("ExternalSizeMax=", ("Cores larger than this are truncated, and flagged so. "
                         "Default 32G.")),
    ("MaxUse=", ("Stored cores may use at most this much disk; older cores are deleted "
                "first, keeping the newest of each user. Default 10% of the file "
                "system, at most 4G.")),
    ("KeepFree=", ("Keep at least this much of the file system free. Default 15% of the "
                  "file system, at most 4G.")),
    ("BinariesMaxUse=", ("Copies of the executables and libraries a crashed process ran "
                         "that its paths no longer give (deleted, replaced, a container's "
                         "own files), kept once per build-id under DIRECTORY/binaries, may "
                         "use at most this much disk; they count towards MaxUse and go when "
                         "no stored core needs them. 0 keeps none. Default 1G.")),
    ("RateLimitIntervalSec=", ("Interval of the per-executable rate limit (s, min, h, d). "
                              "Default 60s.")),
    ("RateLimitBurst=", ("More crashes of one executable than this within the interval "
                        "keep metadata and backtrace but not the core. Default 10.")),
    ("Analysis=", "Whether to analyse cores after storing them (yes or no). Default yes."),
    ("AnalysisTimeoutSec=", ("The detached analysis is stopped after this long. "
                            "Default 120s.")),
    ("AnalysisMemoryMax=", "Address-space limit of the analysis process. Default 2G."),
    ("AnalysisUser=", "User the analysis runs as. Default nobody."),
    ("AnalysisCache=", ("Whether the handler's analyses (and corectl reanalyze) use the "
                        "module cache in DIRECTORY/cache, which corectl analyze uses too: "
                        "what is derived from system files (symbol tables, and names and "
                        "source lines of the addresses looked up), by build-id, so that the "
                        "next crash mapping the same libc does not read it again (yes or "
                        "no). The sandboxed "
                        "analysis never writes there: it reads the entries through "
                        "read-only descriptors, and the root parent derives the missing "
                        "ones from the files alone (files owned by root, writable by no one "
                        "else, in directories likewise), so that no core can poison them. "
                        "Counted by vacuum, at most 64M. Default yes.")),
    ("DebuginfodURLs=", ("debuginfod servers the handler's analysis asks for the debug "
                         "files and executables this machine lacks, by build-id: "
                         "space-separated http:// or https:// URLs, as DEBUGINFOD_URLS "
                         "(which the handler never sees: the kernel starts it with an "
                         "empty environment). The files are fetched by the analysis job "
                         "after the crash is stored (never while the kernel holds the "
                         "process), into DIRECTORY/debuginfod/BUILD-ID/ (elfutils' "
                         "layout), and the analysis runs again when something came; each "
                         "connection waits at most 10s and all of it at most "
                         "AnalysisTimeoutSec, at most 64 files per crash. Not found is "
                         "asked again at the next crash. The fetched files count towards "
                         "MaxUse; vacuum removes them before any core. "
                         "Default empty: no server is asked.")),
    ("Journal=", "Whether to write one journal entry per crash (yes or no). Default yes."),
    ("JournalTimeoutSec=", ("How long a journal write may block before it is given up "
                           "(the core is stored regardless). Default 0.5s.")),
    ("JournalNamespace=", ("The journal namespace the entries go to, as LogNamespace= in "
                          "systemd.exec(5): the journald serving "
                          "/run/systemd/journal.NAMESPACE/socket; journalctl --namespace=NAMESPACE "
                          "reads them, and coredumpctl -D on that namespace's journal "
                          "directory (/var/log/journal/MACHINE-ID.NAMESPACE). "
                          "Names as systemd accepts them: letters, digits and "
                          ":_.@-, at most 222 characters. Default empty: the "
                          "default journal.")),
)

# Documentation of each [Fleet] key; coredumpd.config.fleet_keys() must list exactly these.
FLEET_KEYS = (
    ("Database=", ("The fleet database, a libpq connection URI such as "
                  "postgresql://coredumpd@db.example:5432/crashes. Empty (the default): "
                  "crashes are not published.")),
    ("Host=", ("The host name reported with each crash. Default: this host's name.")),
)

CONF = Program(
    name="coredumpd.conf", section=5,
    summary="coredumpd configuration file",
    synopsis=("/etc/coredumpd/coredumpd.conf",),
    description=(
        ("An INI file shaped like coredump.conf(5), read by coredumpd(8) and corectl(1) "
        "(which also take --config FILE, and COREDUMPD_CONFIG=FILE for corectl). All "
        "keys are in the [Coredump] section. An empty value means the default. Unknown "
        "keys are ignored with a warning."),
        ("A line or value that cannot be read is never a lost crash. coredumpd install "
        "refuses such a file, naming the file, the line and the key (\"FILE line 3: "
        "RateLimitBurst=abc: invalid number\"), and changes nothing; corectl says "
        "\"config error: ...\" and exits with status 2. If the file is edited after "
        "install, the handler uses the default for each value it cannot read, stores the "
        "crash, and says so in the crash's problems and in the kernel log (/dev/kmsg)."),
    ),
    extra_sections=(
        Section("OPTIONS", items=CONFIG_KEYS),
        Section("[FLEET] SECTION", (
            ("Publishing to a fleet database (PostgreSQL) and reading it with corectl "
            "fleet; see coredumpd(8) publish."),), items=FLEET_KEYS),
        Section("EXAMPLE", (
            "[Coredump]\nDirectory=/var/lib/coredumpd\nStorage=external\nMaxUse=2G",)),
    ),
    see_also=("coredumpd(8)", "corectl(1)", "coredump.conf(5)"),
)
