// HelpText.swift — the prose of `concord --help` and `concord run --help`.
//
// Kept apart from the commands so the two screens share one list of environment variables and one
// example, and so the behaviour they describe (JobStateMachine, RankProcess, LaunchPlan) can be checked
// against a single page. Tests/ConcordLauncherTests pins the key phrases.

enum HelpText {
    /// The command every help screen shows as its example.
    static let example = "concord run -n 4 -- concord-bench allreduce -b 8 -e 64M -f 2"

    /// The variables each rank receives, one per line.
    static let environment = """
          CONCORD_RANK              k, this rank: 0 ... N-1
          CONCORD_WORLD_SIZE        N
          CONCORD_LOCAL_RANK        k (all ranks run on this host)
          CONCORD_LOCAL_WORLD_SIZE  N
          CONCORD_MASTER_ADDR       --master-addr (default 127.0.0.1)
          CONCORD_MASTER_PORT       --master-port (default: a free TCP port)
          CONCORD_SECRET            a fresh random job secret, unless this environment has one
                                    (or CONCORD_INSECURE=1 with --insecure)
        """

    /// Which variables Concord programs fall back to when started by another launcher.
    static let otherLaunchers = """
        Concord programs read the CONCORD_* variables first and fall back to those of other launchers, so the \
        same programs also run under them:
          torchrun style     RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT
          SLURM (srun)       SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID
          Open MPI (mpirun)  OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE,
                             OMPI_COMM_WORLD_LOCAL_RANK
        """

    /// The discussion of the root command.
    static let root = """
        concord starts the N processes ("ranks") of a Concord job on this host, tells each one its rank and \
        where to meet the others through environment variables, prefixes every line they print with \
        "[rank k] ", and stops the whole job as soon as one rank fails.

        Each rank receives concord's environment plus:
        \(environment)

        If a rank exits with a non-zero status or is killed by a signal, the other ranks get SIGTERM and, \
        after a grace period, SIGKILL; concord then exits non-zero. SIGINT and SIGTERM sent to concord are \
        forwarded to every rank. 'concord run --help' has the details and the exit statuses.

        With --discover, the members of a job find each other on the network with no addresses (UDP \
        multicast beacons authenticated with the job secret), agree on members, ranks and a ring ordered by \
        measured round trips, and each runs the program as its rank: 'concord run --discover --job NAME \
        --world-size N -- PROGRAM' on every device. 'concord peers' lists what it hears.

        \(otherLaunchers)

        Example (4 ranks of the all-reduce benchmark, 8 B to 64 MiB):
          \(example)
        """

    /// The discussion of `concord run`.
    static let run = """
        Starts N copies of PROGRAM on this host, one per rank, and supervises them until all have exited. \
        PROGRAM is looked up in PATH when its name has no slash, as a shell does. Each rank runs in its own \
        process group, with default signal dispositions, an empty signal mask and stdin from /dev/null.

        ENVIRONMENT
        Each rank receives concord's environment plus these variables (inherited ones of the same name are \
        replaced); every rank gets the same address and port:
        \(environment)
        The default port is found by binding 127.0.0.1:0 and closing the socket, so that jobs running side \
        by side do not collide.

        OUTPUT
        Each line a rank writes to stdout appears on concord's stdout as "[rank k] <line>", and each line it \
        writes to stderr on concord's stderr. Lines of different ranks are never mixed. A last line without a \
        newline is printed with one added when the rank closes its output; lines longer than 64 KiB are split.

        FAILURE
        When a rank exits with a non-zero status or is killed by a signal, concord prints one line on stderr, \
        for example
          concord: rank 2 (pid 1234) exited with status 3; stopping the other ranks
        sends SIGTERM to the process groups of the other ranks and, --grace seconds later, SIGKILL to \
        whatever is left. Output still in the pipes is always printed before concord exits. Once every rank \
        has exited, output held open by their background processes gets --grace seconds more.

        SIGNALS
        SIGINT, SIGTERM and SIGHUP received by concord are forwarded to the process group of every rank, \
        which are then stopped as above (SIGKILL after --grace seconds); concord reports that it was \
        interrupted. A second such signal sends SIGKILL at once.

        EXIT STATUS
          0        every rank exited with status 0
          s        the first rank to fail exited with status s
          128+k    the first rank to fail was killed by signal k (137 for SIGKILL),
                   or concord was interrupted by signal k (130: SIGINT, 143: SIGTERM)
          126/127  PROGRAM cannot be run (127: not found)
          64       invalid command line

        OTHER LAUNCHERS
        \(otherLaunchers)

        EXAMPLE
          \(example)
        """
}
