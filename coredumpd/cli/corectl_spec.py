"""The corectl command line as data (see :mod:`coredumpd.cli.spec`).

Commands and options follow coredumpctl(1) where they overlap, and
CONTRACT.md; the man page man/corectl.1 is generated from this table.
"""

from __future__ import annotations

from coredumpd.cli.spec import Command, Option, Program, Section

_MATCH = Option(
    ("match",), "an ID, a PID, a COMM, an executable path (contains /) or FIELD=VALUE",
    metavar="MATCH", nargs="*",
)

SHARED_OPTIONS = (
    Option(("--config",), "configuration file (default: $COREDUMPD_CONFIG, then "
           "/etc/coredumpd/coredumpd.conf)", metavar="FILE"),
    Option(("--json",), "print JSON (the objects are described under JSON OUTPUT in "
           "corectl(1))", action="store_true"),
    Option(("--no-pager",), "do not pipe the output into a pager", action="store_true"),
    Option(("--no-legend",), "do not print the column headers of list", action="store_true"),
    Option(("--debug",), "print a traceback when an error stops corectl", action="store_true"),
)

LIST = Command(
    "list", "one row per crash, newest last",
    "Lists the crashes recorded in the index, oldest first: time, PID, UID, signal, "
    "the state of the stored core (present, truncated, missing or none), executable, "
    "stored size and the id of the root cause found by the analysis.",
    (
        _MATCH,
        Option(("-S", "--since"), "only crashes at or after DATE (ISO 8601 date or time, "
               "@EPOCH, today, yesterday, or a span ago such as 2h or -30min)", metavar="DATE"),
        Option(("-U", "--until"), "only crashes at or before DATE", metavar="DATE"),
        Option(("-r", "--reverse"), "newest first", action="store_true"),
        Option(("-n", "--lines"), "only the N newest crashes", metavar="N", type=int,
               dest="lines"),
        Option(("-1",), "only the newest crash (same as -n 1)", action="store_true",
               dest="newest_only"),
    ),
)

SHOW = Command(
    "show", "full report of the newest matching crash",
    "Shows the root cause first (each annotation with its evidence and advice), then "
    "the metadata (PID and namespace PID, UID and user name, signal with si_code and "
    "fault address, time, command line, executable, unit, storage and sizes), the "
    "crashing thread's backtrace (symbol, module+offset, file:line and how each frame "
    "was found), the disassembly around the crash address with the faulting "
    "instruction marked, the registers, the other threads and the modules with their "
    "build-ids, flagged when deleted, replaced or modified in place.",
    (_MATCH,), aliases=("info",),
)

DUMP = Command(
    "dump", "write the raw ELF core of the newest matching crash",
    "Decompresses the stored core into FILE (or standard output when it is not a "
    "terminal). A progress bar is shown on a terminal for big cores. corectl refuses "
    "to write a core to a terminal. With --with-binaries, -o names a directory that "
    "receives the core (DIR/core) and the executable and libraries the process ran, "
    "at the paths it mapped them from: the copies coredumpd kept where the files on "
    "disk changed (deleted, replaced, a container's own), else this machine's files; "
    "gdb -ex 'set sysroot DIR' DIR/EXE DIR/core then reads exactly those.",
    (
        _MATCH,
        Option(("-o", "--output"), "write the core to FILE (\"-\": standard output)",
               metavar="FILE"),
        Option(("--with-binaries",), "also write the binaries that ran; -o is a directory",
               action="store_true"),
    ),
)

DEBUG = Command(
    "debug", "run a debugger on the executable and the core",
    "Decompresses the core of the newest matching crash into a private temporary file, "
    "runs the debugger (gdb, or $COREDUMPD_DEBUGGER) as DEBUGGER EXE CORE, and removes "
    "the file when the debugger exits. corectl exits with the debugger's status. When "
    "a file the process ran changed since (deleted, replaced, a container's own), the "
    "executable is the copy coredumpd kept, and gdb gets a sysroot of those files "
    "(set sysroot), so it reads the binaries that ran without being told.",
    (
        _MATCH,
        Option(("--debugger",), "the debugger command, split like a shell would "
               "(default: $COREDUMPD_DEBUGGER, then gdb)", metavar="CMD"),
    ),
)

ANALYZE = Command(
    "analyze", "analyse any core file, no store needed",
    "Runs the whole analysis (unwinding, symbols, root-cause rules) on CORE, a raw "
    "ELF core or a core stored by coredumpd (seekable lz4), and prints it like show. "
    "Useful for cores from other machines. With DEBUGINFOD_URLS set, debug files and "
    "executables this machine lacks are fetched by build-id, as reanalyze does. Where "
    "coredumpd serve runs, the corectl command hands analyze to its analysis worker "
    "($COREDUMPD_ANALYZE_SOCKET, default /run/coredumpd/analyze.socket), which has "
    "the analysis imported already: a child of the worker becomes the calling user "
    "(its uid, gids, resource limits, working directory, environment and standard "
    "streams) and runs the command there, so the output, the exit status and what may "
    "be read are those of corectl run by the user; on a terminal the pager still runs "
    "in corectl. Without a worker, when the worker refuses (another mount namespace or "
    "root directory, too many at once, another installation), or for options spelled "
    "other than as listed here, corectl analyses in its own process.",
    (
        Option(("core",), "the core file (raw ELF or coredumpd's .lz4)", metavar="CORE"),
        Option(("--exe",), "the executable that crashed (default: from the core)",
               metavar="PATH"),
    ),
)

REANALYZE = Command(
    "reanalyze", "analyse stored crashes again",
    "Runs the analysis of every matching stored crash again, in the same sandbox as "
    "the first one, and stores the new result (root only). Useful after installing "
    "debug files, after a debuginfod server got the files of a build, or with newer "
    "rules. When DEBUGINFOD_URLS is set, the debug files and executables the last "
    "analysis lacked are fetched by build-id first, into elfutils' cache "
    "(DEBUGINFOD_CACHE_PATH, else $XDG_CACHE_HOME/debuginfod_client, else "
    "~/.cache/debuginfod_client; DEBUGINFOD_TIMEOUT, DEBUGINFOD_MAXTIME and "
    "DEBUGINFOD_MAXSIZE apply), and show says for each module where its symbols came "
    "from. With a fleet database configured ([Fleet] Database=), the new analysis is "
    "published at once and replaces the crash's earlier record there (its group is "
    "recounted); what the database does not take waits in the outbox.",
    (Option(("match",), "what to reanalyse, as for list", metavar="MATCH", nargs="+"),),
)

DELETE = Command(
    "delete", "delete crashes and their cores",
    "Deletes every matching crash: its index row and its stored core.",
    (Option(("match",), "what to delete, as for list", metavar="MATCH", nargs="+"),),
)

VACUUM = Command(
    "vacuum", "delete old cores to free space",
    "Deletes stored cores, oldest first, until the store is below the limits, always "
    "keeping the newest cores of each user first (per-user fairness, as "
    "systemd-coredump does). Without options the configured MaxUse and KeepFree apply. "
    "Index rows stay, marked missing.",
    (
        Option(("--max-use",), "keep the stored cores under SIZE in total (e.g. 1G)",
               metavar="SIZE"),
        Option(("--keep-free",), "keep at least SIZE free on the file system", metavar="SIZE"),
        Option(("--older-than",), "delete cores older than AGE (e.g. 7d, 12h)",
               metavar="AGE"),
    ),
)

FLEET = Command(
    "fleet", "crashes of every host, from the fleet database",
    "Reads the fleet database named by [Fleet] Database= (see coredumpd.conf(5)), where "
    "the coredumpd of every host publishes its crashes. fleet groups prints one row per "
    "signature, the most frequent first: the frames that make the signature (as Socorro "
    "writes them, innermost first: parse_header | main) with its hash, the root cause, the "
    "number of crashes and of distinct hosts, first and last seen, the versions seen and "
    "the newest example (host and crash id; the core stays on that host). fleet list "
    "prints one row per crash of every host, newest last, selected by the MATCH forms of "
    "list.",
    (
        Option(("view",), "groups or list", metavar="groups|list"),
        _MATCH,
        Option(("-S", "--since"), "only crashes at or after DATE (as for list)",
               metavar="DATE"),
        Option(("-U", "--until"), "only crashes at or before DATE", metavar="DATE"),
        Option(("-n", "--lines"), "list: only the N newest crashes", metavar="N", type=int,
               dest="lines"),
    ),
)

CORECTL = Program(
    name="corectl", section=1,
    summary="browse and analyse the crashes stored by coredumpd",
    synopsis=("[OPTIONS] list [MATCH...]", "[OPTIONS] show|info [MATCH...]",
              "[OPTIONS] dump [MATCH...] -o FILE", "[OPTIONS] dump MATCH -o DIR --with-binaries",
              "[OPTIONS] debug [MATCH...]",
              "[OPTIONS] analyze CORE [--exe PATH]", "[OPTIONS] reanalyze MATCH...",
              "[OPTIONS] delete MATCH...",
              "[OPTIONS] vacuum [--max-use SIZE] [--keep-free SIZE] [--older-than AGE]",
              "[OPTIONS] fleet groups [--since DATE] [MATCH...]",
              "[OPTIONS] fleet list [MATCH...]"),
    description=(
        ("corectl reads the index of crashes kept by coredumpd(8), like coredumpctl(1) "
        "reads the journal. It reads the SQLite index in the storage directory, not the "
        "journal, so foreign or malformed journal entries do not disturb it."),
        ("Users other than root see only their own crashes. On a terminal the output is "
        "coloured and goes through a pager; piped, it is plain. Every string that came "
        "from the crashed process (command name, command line, paths, strings from "
        "memory) has its control characters escaped before it is printed."),
    ),
    commands=(LIST, SHOW, DUMP, DEBUG, ANALYZE, REANALYZE, DELETE, VACUUM, FLEET),
    shared_options=SHARED_OPTIONS,
    extra_sections=(
        Section("MATCHES", (
            ("A MATCH selects crashes as coredumpctl(1) does: a crash id, a PID (a "
            "number), an executable path (contains a slash), FIELD=VALUE for a field of "
            "the index (e.g. uid=1000, signal=11, unit=x.service), or else a "
            "command name. Several matches of the same field are alternatives; matches "
            "of different fields must all hold."),
            ("CONTAINER_ID=ID (or COREDUMP_CONTAINER_ID=ID, the journal field's name) "
            "selects the crashes of one container: ID is the container id that list --json "
            "prints as container_id, found from the crashed process's cgroup (docker, "
            "podman, containerd and Kubernetes, CRI-O: the full 64-digit id; "
            "systemd-nspawn: the machine name). Like every FIELD=VALUE match it is exact."),)),
        Section("JSON OUTPUT", (
            ("With --json, list prints an array of objects with id, pid, uid, "
            "signal_name, timestamp (ISO 8601, UTC), comm, exe, core_state, root_cause "
            "and more; show and analyze print one object with the metadata, core, "
            "analysis, annotations, threads (frames with pc, module, build_id, offset, "
            "symbol, symbol_offset, file, line, trust), modules, disassembly and "
            "registers. fleet groups prints an array of objects with signature (the hash), "
            "frames, root_cause, crashes, hosts, first_seen, last_seen, versions and "
            "example (host, id); fleet list an array of objects with timestamp, host, id, "
            "machine_id, container_id, pid, uid, signal_name, comm, exe, core_state, "
            "core_path, root_cause, signature and frames. Strings in JSON are escaped by "
            "JSON itself."),)),
        Section("EXIT STATUS", items=(
            ("0", "Success."),
            ("1", "No crash matched (\"No coredumps found.\" on standard error)."),
            ("2", ("Usage error (unknown option, missing argument), or a configuration "
                  "file that is missing or has a value that cannot be read: \"corectl: "
                  "error: config error: FILE line N: KEY=VALUE: why\".")),
            ("3", ("Any other error: store, unreadable core, bad time; printed as "
                  "\"corectl: error: ...\".")),
            ("4", "The crash matched but its core is not stored (missing or none)."),
            ("130", "Interrupted (Ctrl-C)."),
        )),
        Section("ENVIRONMENT", items=(
            ("COREDUMPD_CONFIG", "configuration file, as --config."),
            ("COREDUMPD_DEBUGGER", "debugger command for debug (default gdb)."),
            ("COREDUMPD_ANALYZE_SOCKET", ("the socket of the analysis worker of coredumpd "
             "serve that runs analyze (default /run/coredumpd/analyze.socket); empty: "
             "analyze always runs in corectl's own process.")),
            ("PAGER", "pager for terminal output (default less with LESS=FRSXMK)."),
            ("NO_COLOR", "when set, no colours even on a terminal."),
            ("TMPDIR", "where debug decompresses the core."),
        )),
        Section("FILES", items=(
            ("/etc/coredumpd/coredumpd.conf", "configuration, see coredumpd.conf(5)."),
            ("/var/lib/coredumpd/index.sqlite", ("the index of crashes (Directory= in "
             "the configuration).")),
        )),
        Section("EXAMPLES", items=(
            ("corectl list -S today", "today's crashes."),
            ("corectl show node", "the newest crash of a process named node."),
            ("corectl --json list uid=1000", "crashes of user 1000 as JSON."),
            ("corectl dump 1234 -o core.1234", "the raw core of PID 1234."),
            ("corectl analyze ./core --exe ./prog", "analyse a core from elsewhere."),
            ("corectl fleet groups -S 1d", "what crashed across the fleet in the last day."),
        )),
    ),
    see_also=("coredumpd(8)", "coredumpd.conf(5)", "coredumpctl(1)", "gdb(1)", "core(5)"),
)
